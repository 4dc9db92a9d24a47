-- Test app for tests/test_process.py: a raw line protocol (global on_data) whose
-- commands make a worker show what it is and exercise the server's features.
-- One command per line, answered with one line unless noted:
--
--   PING                -> PONG
--   WORKER              -> this worker's WORKERID
--   PID                 -> this worker process' pid (from net.info())
--   STATS               -> version=<VERSION> loads=<times this file ran> counter=<counter>
--   INCR                -> counter after adding 1 (a global: survives reloads)
--   BOOM                -> raises in on_data (the server logs it, closes the connection)
--   TIMERBOOM           -> SCHEDULED; a timer then raises
--   CORBOOM             -> SCHEDULED; a coroutine (aio:async) then raises after a sleep
--   SLOW secs n         -> WAIT at once; after secs: "DATA n" and n bytes, then the server closes
--   BLOCK secs          -> BLOCKING, then blocks this worker's loop for secs, then
--                          BLOCKED <WORKERID>
--   ASK w               -> mails worker w (OTHER: the next worker) a string and a nested
--                          table; w mails both back; the answer line is
--                          ANSWER from=<w> string=<what w got> seen=<table as w got it>
--                          back=<table as it came back> (tables via serialize below)
--   BCAST               -> broadcasts a string and the table to every worker; each mails
--                          back; one line "ACK <w> string=<..> seen=<..>" per worker, then END
--   LOCAL               -> serialize(PAYLOAD) in this worker (the reference for ASK/BCAST)
--   FETCH [port]        -> aio:connect to 127.0.0.1:port (default $UPSTREAM_PORT), sends
--                          "hello upstream", answers UPSTREAM <reply, newlines as |>, or
--                          UPSTREAM-ERR <reason> if the connection failed
--   CONNECTS n          -> n times in a row: aio:connect to this server, "PING" and "QUIT",
--                          read the answer to the close with aio:cor (even cycles) or
--                          aio:buffered_cor (odd); then CONNECTS ok=<cycles that read
--                          "PONG|BYE|"> before=<KiB> after=<KiB>: the Lua heap after a
--                          full collection once a tenth of the cycles ran, and at the end
--   UPPER text          -> example.upper(text)          (needs -m modules/example.py)
--   RESOLVE host        -> RESOLVED a,b,.. from example.resolve(host), or ERR <err>
--   QUIT                -> BYE, then the server closes the connection
--   SHUTDOWN            -> STOPPING true; aio:quit() stops the whole server
--
-- Lines that tests look up by their marker comment (to expect file:line in logs)
-- must keep those comments.

VERSION = "v1" -- tests rewrite this line in a copy to prove SIGHUP re-runs the file
loads = (loads or 0) + 1
counter = counter or 0
pending_asks = pending_asks or {}   -- fd -> true while an ASK waits for its answer
pending_bcasts = pending_bcasts or {} -- fd -> acks received so far
last_string = last_string or {}     -- sender worker -> last plain-string mail from it

PAYLOAD = {
    text = "h\195\169llo w\195\182rld", n = 42, pi = 3.5, neg = -7, flag = true, off = false,
    list = { 1, "two", { three = 3 } },
    nested = { deeper = { deepest = "yes", nums = { 10, 20, 30 } } },
}

local buffers = {}

--- A canonical text form of a value: sorted keys, strings quoted, types visible.
function serialize(v)
    local t = type(v)
    if t == "table" then
        local keys = {}
        for k in pairs(v) do keys[#keys + 1] = k end
        table.sort(keys, function(a, b)
            local ta, tb = type(a), type(b)
            if ta ~= tb then return ta < tb end
            return a < b
        end)
        local parts = {}
        for i, k in ipairs(keys) do
            parts[i] = serialize(k) .. "=" .. serialize(v[k])
        end
        return "{" .. table.concat(parts, ",") .. "}"
    elseif t == "string" then
        return string.format("%q", v)
    end
    return tostring(v)
end

local function reply(fd, text)
    net.write(ELFD, fd, text .. "\n")
end

local function my_pid()
    return net.info():match("pid: (%d+)")
end

local function fetch(fd, port)
    local sock, err = aio:connect(ELFD, "127.0.0.1", port)
    if not sock then
        reply(fd, "UPSTREAM-ERR " .. tostring(err))
        return
    end
    local got = {}
    function sock:on_data(elfd, cfd, data)
        got[#got + 1] = data
    end
    function sock:on_close(elfd, cfd, reason)
        if #got == 0 then
            reply(fd, "UPSTREAM-ERR " .. tostring(reason))
        else
            reply(fd, "UPSTREAM " .. (table.concat(got):gsub("\n", "|")))
        end
    end
    sock:write("hello upstream\n")
end

--- One short-lived outgoing connection to this server, read to its close.
local function connect_cycle(i)
    local sock, err = aio:connect(ELFD, "127.0.0.1", PORT)
    if not sock then return nil, err end
    sock:write("PING\nQUIT\n")
    if i % 2 == 0 then
        return aio:await(aio:cor(sock, function(stream, resolve)
            local parts = {}
            for chunk in stream do parts[#parts + 1] = chunk end
            resolve(table.concat(parts))
        end))
    end
    return aio:await(aio:buffered_cor(sock, function(resolve)
        local first = coroutine.yield("\n")
        local second = coroutine.yield("\n")
        local _, eof = coroutine.yield("\n")
        resolve(first .. "\n" .. second .. "\n" .. (eof == "eof" and "" or "no eof"))
    end))
end

local function heap_kib()
    collectgarbage("collect")
    collectgarbage("collect")
    return collectgarbage("count")
end

local function connects(fd, n)
    aio:async(function()
        local ok, before = 0, nil
        for i = 1, n do
            if i == math.floor(n / 10) + 1 then before = heap_kib() end
            if connect_cycle(i) == "PONG\nBYE\n" then ok = ok + 1 end
        end
        reply(fd, string.format("CONNECTS ok=%d before=%.0f after=%.0f", ok, before, heap_kib()))
    end)
end

local function handle(fd, line)
    local command, rest = line:match("^(%u+)%s*(.-)%s*$")
    if command == "PING" then
        reply(fd, "PONG")
    elseif command == "WORKER" then
        reply(fd, tostring(WORKERID))
    elseif command == "PID" then
        reply(fd, my_pid())
    elseif command == "STATS" then
        reply(fd, "version=" .. VERSION .. " loads=" .. loads .. " counter=" .. counter)
    elseif command == "INCR" then
        counter = counter + 1
        reply(fd, tostring(counter))
    elseif command == "BOOM" then
        error("boom requested") -- BOOM_LINE
    elseif command == "TIMERBOOM" then
        aio:set_timeout(function()
            error("timer boom") -- TIMERBOOM_LINE
        end, 0)
        reply(fd, "SCHEDULED")
    elseif command == "CORBOOM" then
        aio:async(function()
            aio:await(aio:sleep(0.01))
            error("coroutine boom") -- CORBOOM_LINE
        end)
        reply(fd, "SCHEDULED")
    elseif command == "SLOW" then
        local seconds, n = rest:match("^(%S+)%s+(%d+)$")
        reply(fd, "WAIT")
        aio:set_timeout(function()
            n = tonumber(n)
            local body = string.rep("0123456789", math.ceil(n / 10)):sub(1, n)
            net.write(ELFD, fd, "DATA " .. n .. "\n" .. body)
            net.close(ELFD, fd)
        end, tonumber(seconds))
    elseif command == "BLOCK" then
        -- answer first (writes made in on_data go out when it returns), block in a
        -- timer: once the client has BLOCKING, this worker accepts nothing until BLOCKED
        reply(fd, "BLOCKING")
        aio:set_timeout(function()
            local deadline = net.clock() + tonumber(rest)
            while net.clock() < deadline do end
            reply(fd, "BLOCKED " .. WORKERID)
        end, 0)
    elseif command == "ASK" then
        local target = rest == "OTHER" and (WORKERID + 1) % WORKERS or tonumber(rest)
        local ok, err = aio:mail({ worker = target, message = "plain string from " .. WORKERID })
        if not ok then
            reply(fd, "ERR " .. tostring(err))
            return
        end
        pending_asks[fd] = true
        aio:mail({ worker = target, message = { kind = "ask", fd = fd, payload = PAYLOAD } })
    elseif command == "BCAST" then
        pending_bcasts[fd] = {}
        aio:broadcast("broadcast string from " .. WORKERID)
        aio:broadcast({ kind = "bcast", origin = WORKERID, fd = fd, payload = PAYLOAD })
    elseif command == "LOCAL" then
        reply(fd, serialize(PAYLOAD))
    elseif command == "FETCH" then
        fetch(fd, tonumber(rest ~= "" and rest or os.getenv("UPSTREAM_PORT")))
    elseif command == "CONNECTS" then
        connects(fd, tonumber(rest))
    elseif command == "UPPER" then
        reply(fd, example.upper(rest))
    elseif command == "RESOLVE" then
        aio:async(function()
            local addresses, err = aio:await(example.resolve(rest))
            if not addresses then
                reply(fd, "ERR " .. tostring(err))
            else
                reply(fd, "RESOLVED " .. table.concat(addresses, ","))
            end
        end)
    elseif command == "QUIT" then
        reply(fd, "BYE")
        net.close(ELFD, fd)
    elseif command == "SHUTDOWN" then -- aio:quit(): the whole server stops
        reply(fd, "STOPPING " .. tostring(aio:quit()))
    else
        reply(fd, "ERR unknown command " .. line)
    end
end

function on_data(elfd, fd, data)
    local buf = (buffers[fd] or "") .. data
    while true do
        local line, after = buf:match("^([^\n]*)\n(.*)$")
        if not line then break end
        buf = after
        buffers[fd] = buf
        handle(fd, (line:gsub("\r$", "")))
    end
    buffers[fd] = buf
end

function on_close(elfd, fd)
    buffers[fd] = nil
    pending_asks[fd] = nil
    pending_bcasts[fd] = nil
end

function on_message(sender, elfd, sender_fd, elfd2, receiver_fd, mtype, message)
    if type(message) == "string" then
        last_string[sender] = message
    elseif message.kind == "ask" then
        -- answer through the mailbox: the asker's fd travels as receiver_fd
        aio:mail({ worker = sender, fd = message.fd, message = {
            kind = "answer", worker = WORKERID, string = last_string[sender],
            seen = serialize(message.payload), payload = message.payload,
        } })
    elseif message.kind == "answer" then
        if pending_asks[receiver_fd] then
            pending_asks[receiver_fd] = nil
            reply(receiver_fd, "ANSWER from=" .. message.worker .. " string=" .. tostring(message.string)
                .. " seen=" .. message.seen .. " back=" .. serialize(message.payload))
        end
    elseif message.kind == "bcast" then
        aio:mail({ worker = message.origin, fd = message.fd, message = {
            kind = "bcast_ack", worker = WORKERID, string = last_string[sender],
            seen = serialize(message.payload),
        } })
    elseif message.kind == "bcast_ack" then
        local acks = pending_bcasts[receiver_fd]
        if acks then
            acks[#acks + 1] = message
            if #acks == WORKERS then
                pending_bcasts[receiver_fd] = nil
                table.sort(acks, function(a, b) return a.worker < b.worker end)
                for _, ack in ipairs(acks) do
                    reply(receiver_fd, "ACK " .. ack.worker .. " string=" .. tostring(ack.string)
                        .. " seen=" .. ack.seen)
                end
                reply(receiver_fd, "END")
            end
        end
    end
end
