-- aio:cor, aio:cor1, aio:cor2 and aio:buffered_cor over a fake socket.

local T = {}

local pack = table.pack or function(...) return { n = select("#", ...), ... } end

--- A stand-in for an aiosocket: events are delivered by calling its
--- on_data/on_close yourself; close() only counts.
local function fake_socket()
    local sock = { closes = 0 }
    function sock:close() self.closes = self.closes + 1 end
    return sock
end

local function feed(sock, ...)
    for i = 1, select("#", ...) do
        local chunk = select(i, ...)
        sock:on_data(0, 1, chunk, #chunk)
    end
end

---------------------------------------------------------------------------
-- cor / cor1 / cor2
---------------------------------------------------------------------------

function T.cor_streams_chunks_in_order_then_nil(t)
    local sock = fake_socket()
    local got = {}
    local done = aio:cor(sock, function(stream, resolve)
        repeat
            local chunk, length = stream()
            got[#got + 1] = chunk and chunk .. "/" .. length or "nil"
        until chunk == nil
        resolve("finished")
    end)
    feed(sock, "a", "bb")
    t.eq(got, { "a/1", "bb/2" }, "chunks as they arrive")
    feed(sock, "ccc")
    sock:on_close()
    t.eq(got, { "a/1", "bb/2", "ccc/3", "nil" }, "nil at close")
    t.eq(pack(aio:await(done)), { n = 1, "finished" }, "resolved")
    t.eq(sock.closes, 0, "the socket is left alone")
end

function T.cor_for_loop_reads_everything(t)
    local sock = fake_socket()
    local done = aio:cor(sock, function(stream, resolve)
        local parts = {}
        for chunk in stream do parts[#parts + 1] = chunk end
        resolve(table.concat(parts, ","))
    end)
    feed(sock, "x", "y", "z")
    sock:on_close()
    t.eq(aio:await(done), "x,y,z")
end

function T.cor_80s_idiom_with_explicit_yield(t)
    local sock = fake_socket()
    local done = aio:cor(sock, function(stream, resolve)
        local parts = {}
        for chunk in stream do
            parts[#parts + 1] = chunk
            coroutine.yield()
        end
        resolve(table.concat(parts, ","))
    end)
    feed(sock, "a", "b", "c")
    t.ok(not done:is_resolved(), "still reading")
    sock:on_close()
    t.eq(aio:await(done), "a,b,c")
end

function T.cor_keeps_chunks_that_arrive_during_an_await(t)
    local sock = fake_socket()
    local resolve_wait, wait = aio:prepare_promise()
    local got = {}
    local done = aio:cor(sock, function(stream, resolve)
        for chunk in stream do
            got[#got + 1] = chunk
            if chunk == "1" then got[#got + 1] = aio:await(wait) end
        end
        resolve(true)
    end)
    feed(sock, "1", "2", "3")
    sock:on_close()
    t.eq(got, { "1" }, "the coroutine is awaiting")
    resolve_wait("waited")
    t.eq(got, { "1", "waited", "2", "3" }, "nothing lost, order kept")
    t.eq(aio:await(done), true, "finished at close")
end

function T.cor_80s_idiom_keeps_chunks_that_arrive_during_an_await(t)
    local sock = fake_socket()
    local got = {}
    local done = aio:cor(sock, function(stream, resolve)
        for chunk in stream do
            got[#got + 1] = chunk
            aio:await(aio:sleep(0.001))
            coroutine.yield()
        end
        resolve(table.concat(got, ","))
    end)
    feed(sock, "a", "b", "c")
    sock:on_close()
    t.eq(aio:await(done), "a,b,c")
end

function T.cor2_uses_the_named_events_and_passes_their_arguments(t)
    local emitter = {}
    local got = {}
    local done = aio:cor2(emitter, "on_message", "on_end", function(stream, resolve)
        for a, b, c in stream do got[#got + 1] = pack(a, b, c) end
        resolve(#got)
    end)
    emitter:on_message(0, 1, "x", nil, 3)
    emitter:on_message(0, 1, "y")
    emitter:on_end()
    t.eq(got, { { n = 3, "x", nil, 3 }, { n = 3, "y" } })
    t.eq(aio:await(done), 2)
end

function T.cor1_has_no_close_event(t)
    local emitter = {}
    local got = {}
    aio:cor1(emitter, "on_tick", function(stream)
        for v in stream do got[#got + 1] = v end
    end)
    emitter:on_tick(0, 1, "a")
    emitter:on_tick(0, 1, "b")
    t.eq(got, { "a", "b" })
    t.eq(emitter.on_close, nil, "no close handler installed")
end

function T.error_in_cor_closes_the_socket_and_is_logged(t)
    local sock = fake_socket()
    local where
    local done = aio:cor(sock, function(stream)
        stream()
        where = t.here(); error("bad chunk")
    end)
    feed(sock, "boom")
    t.eq(sock.closes, 1, "closed")
    t.eq(pack(aio:await(done)), { n = 2, nil, where .. ": bad chunk" }, "resolved nil, err")
    t.logged(where .. ": bad chunk")
end

---------------------------------------------------------------------------
-- buffered_cor
---------------------------------------------------------------------------

--- A buffered_cor that issues `requests` (each a yield argument list) in turn
--- and records each result: the bytes, or "<err>" for nil, err.
local function reader(requests)
    local sock = fake_socket()
    local got = {}
    local done = aio:buffered_cor(sock, function(resolve)
        for i = 1, #requests do
            local value, err = coroutine.yield(unpack(requests[i], 1, 2))
            got[#got + 1] = value or "<" .. tostring(err) .. ">"
        end
        resolve(got)
    end)
    return sock, got, done
end

--- Like reader() but repeats one request until the stream ends.
local function frames(delimiter, cap)
    local sock = fake_socket()
    local got = {}
    aio:buffered_cor(sock, function()
        while true do
            local value, err = coroutine.yield(delimiter, cap)
            got[#got + 1] = value or "<" .. tostring(err) .. ">"
            if value == nil then return end
        end
    end)
    return sock, got
end

function T.byte_counts_across_chunk_boundaries(t)
    local sock, got, done = reader({ { 3 }, { 5 }, { 2 }, { 0 }, { 1 } })
    feed(sock, "ab")
    t.eq(got, {}, "2 bytes do not answer a read of 3")
    feed(sock, "cdefg")
    t.eq(got, { "abc" }, "first read")
    feed(sock, "hij")
    t.eq(got, { "abc", "defgh", "ij", "" }, "reads spanning chunks, then an empty read")
    sock:on_close()
    t.eq(aio:await(done), { "abc", "defgh", "ij", "", "<eof>" })
end

function T.byte_counts_at_every_split_point(t)
    local message = "0123456789abcdef"
    for split = 0, #message do
        local sock, got = reader({ { 4 }, { 1 }, { 7 }, { 4 }, { 1 } })
        feed(sock, message:sub(1, split), message:sub(split + 1))
        sock:on_close()
        t.eq(got, { "0123", "4", "56789ab", "cdef", "<eof>" }, "split at " .. split)
    end
end

local DELIMITED = {
    {
        name = "CRLF", delimiter = "\r\n",
        stream = "GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\r\n\n\r\ntail",
        frames = { "GET / HTTP/1.1", "Host: x", "", "\r", "\n", "<eof>" },
    },
    {
        name = "CRLFCRLF", delimiter = "\r\n\r\n",
        stream = "head\r\n\r\n\r\n\r\nx\r\n\r\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\r\n\r\n!",
        frames = { "head", "", "x\r\n\r", "", "", "\r\n\r", "<eof>" },
    },
}

function T.delimiter_split_at_every_byte_position(t)
    for _, case in ipairs(DELIMITED) do
        local message = case.stream
        for split = 0, #message do
            local sock, got = frames(case.delimiter)
            feed(sock, message:sub(1, split), message:sub(split + 1))
            sock:on_close()
            t.eq(got, case.frames, case.name .. " split at " .. split)
        end
        local sock, got = frames(case.delimiter)
        for i = 1, #message do feed(sock, message:sub(i, i)) end
        sock:on_close()
        t.eq(got, case.frames, case.name .. " byte by byte")
    end
end

function T.frame_of_exactly_cap_bytes_fits_at_every_split_point(t)
    local cases = {
        { name = "CRLF", delimiter = "\r\n", stream = "hello\r\nhi\r\n12345\r\n",
          frames = { "hello", "hi", "12345", "<eof>" } },
        { name = "CRLFCRLF", delimiter = "\r\n\r\n", stream = "hello\r\n\r\n\r\n\r\n12345\r\n\r\n",
          frames = { "hello", "", "12345", "<eof>" } },
    }
    for _, case in ipairs(cases) do
        local message = case.stream
        for split = 0, #message do
            local sock, got = frames(case.delimiter, 5)
            feed(sock, message:sub(1, split), message:sub(split + 1))
            sock:on_close()
            t.eq(got, case.frames, case.name .. " with cap 5 split at " .. split)
        end
    end
end

function T.many_frames_in_one_chunk(t)
    local sock, got = frames("\n")
    local lines = {}
    for i = 1, 100 do lines[i] = "line " .. i end
    feed(sock, table.concat(lines, "\n") .. "\n")
    t.eq(got, lines)
end

function T.delimiter_not_found_within_cap_overflows(t)
    local sock, got = reader({ { "\r\n", 8 } })
    feed(sock, "0123", "4567")
    t.eq(got, {}, "8 bytes could still be a frame")
    feed(sock, "8")
    t.eq(got, {}, "so could 8 bytes and a \\r")
    feed(sock, "9")
    t.eq(got, { "<overflow>" }, "10 bytes without a delimiter cannot")

    sock, got = reader({ { "\r\n", 8 } })
    feed(sock, "012345678\r\n")
    t.eq(got, { "<overflow>" }, "a 9-byte frame, delimiter in the same chunk")

    sock, got = reader({ { "\r\n", 8 }, { "\r\n", 8 } })
    feed(sock, "01234567\r\n012345678\r\n")
    t.eq(got, { "01234567", "<overflow>" }, "8 fits, 9 does not")
end

function T.default_cap_is_max_buffer(t)
    aio.max_buffer = 16
    local sock, got = reader({ { "\n" }, { "\n" } })
    feed(sock, string.rep("x", 16) .. "\n" .. string.rep("y", 17) .. "\n")
    t.eq(got, { string.rep("x", 16), "<overflow>" })
end

function T.numeric_read_larger_than_cap_overflows(t)
    local sock, got = reader({ { 10, 5 } })
    t.eq(got, { "<overflow>" }, "at once, without data")
    aio.max_buffer = 4
    sock, got = reader({ { 4 }, { 5 } })
    feed(sock, "abcdefgh")
    t.eq(got, { "abcd", "<overflow>" }, "default cap")
end

function T.after_overflow_the_buffered_bytes_are_still_readable(t)
    local sock, got = reader({ { "\r\n", 4 }, { "|" }, { 4 } })
    feed(sock, "a|c")
    feed(sock, "defg")
    t.eq(got, { "<overflow>", "a", "cdef" })
end

function T.eof_while_a_read_is_pending(t)
    local sock, got = reader({ { 10 } })
    feed(sock, "abc")
    sock:on_close()
    t.eq(got, { "<eof>" }, "numeric read")

    sock, got = reader({ { "\r\n" } })
    feed(sock, "abc\r")
    sock:on_close()
    t.eq(got, { "<eof>" }, "delimited read")
end

function T.data_buffered_before_close_is_read_before_eof(t)
    local sock = fake_socket()
    local resolve_wait, wait = aio:prepare_promise()
    local done = aio:buffered_cor(sock, function(resolve)
        local got = { coroutine.yield("\r\n") }
        aio:await(wait)
        got[#got + 1] = coroutine.yield("\r\n")
        got[#got + 1] = coroutine.yield(2)
        local value, err = coroutine.yield(1)
        got[#got + 1] = value or err
        resolve(got)
    end)
    feed(sock, "first\r\n")
    feed(sock, "second\r\nxy")
    sock:on_close()
    resolve_wait()
    t.eq(aio:await(done), { "first", "second", "xy", "eof" })
end

function T.await_inside_while_data_arrives(t)
    local sock = fake_socket()
    local done = aio:buffered_cor(sock, function(resolve)
        local got = {}
        while true do
            local line = coroutine.yield("\n")
            if line == nil then break end
            got[#got + 1] = line
            got[#got + 1] = aio:await(aio:sleep(0.001)) and "slept"
            local size = tonumber(coroutine.yield(1))
            if size then got[#got + 1] = coroutine.yield(size) end
        end
        resolve(got)
    end)
    feed(sock, "one\n3ab")
    aio:await(aio:sleep(0)) -- let the coroutine's sleep start before more data
    feed(sock, "ctwo\n", "1z", "thr", "ee\n2", "yy")
    sock:on_close()
    t.eq(aio:await(done), { "one", "slept", "abc", "two", "slept", "z", "three", "slept", "yy" })
end

function T.await_of_a_resolved_promise_inside_does_not_disturb_reads(t)
    local sock = fake_socket()
    local got = {}
    aio:buffered_cor(sock, function()
        for _ = 1, 3 do
            got[#got + 1] = coroutine.yield(2)
            got[#got + 1] = aio:await(aio:resolved("r"))
        end
    end)
    feed(sock, "aabbcc")
    t.eq(got, { "aa", "r", "bb", "r", "cc", "r" })
end

function T.error_in_buffered_cor_closes_the_socket_and_is_logged(t)
    local sock = fake_socket()
    local where
    local done = aio:buffered_cor(sock, function()
        local header = coroutine.yield("\n")
        where = t.here(); error("bad header " .. header)
    end)
    feed(sock, "junk\nmore\n")
    t.eq(sock.closes, 1, "closed")
    t.eq(pack(aio:await(done)), { n = 2, nil, where .. ": bad header junk" }, "resolved nil, err")
    local line = t.logged(where .. ": bad header junk")
    t.ok(line:find("stack traceback", 1, true), "traceback in " .. line)
    feed(sock, "after the error\n") -- ignored
end

function T.bad_request_is_an_error(t)
    local sock = fake_socket()
    local ok, err = pcall(aio.buffered_cor, aio, sock, function()
        coroutine.yield({})
    end)
    t.eq(ok, false, "pcall")
    t.ok(tostring(err):find("yield a byte count or a non-empty delimiter", 1, true), err)
end

return T
