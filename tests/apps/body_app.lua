-- Request bodies off the heap (tests/test_body_spool.py): each handler hashes
-- the body it gets and answers "<size> <hex sha256 chain> <where>", the chain
-- being sha256(prev .. sha256(piece)) over 64 KiB pieces (what fd:read_body gives).
local function chain(fd)
    local h, size = "", 0
    assert(fd:read_body(function(piece)
        size = size + #piece
        h = crypto.sha256(h .. crypto.sha256(piece))
    end))
    return size, codec.hex_encode(h)
end

aio:http_post("/upload", function(fd, query, headers, body)
    local size, hash = chain(fd)
    local where = fd.body_file and "file" or "memory"
    if fd.body_file then assert(body == nil and fd.body == nil) else assert(body == fd.body) end
    fd:http_response(200, "text/plain", size .. " " .. hash .. " " .. where)
end)

-- the body as one string, and the path, for a slow handler (the file lives until it answers)
aio:http_post("/whole", function(fd)
    local path = fd.body_file
    aio:await(aio:sleep(0.2))
    local data = assert(fd:read_body())
    fd:http_response(200, "text/plain", #data .. " " .. codec.hex_encode(crypto.sha256(data))
        .. " " .. tostring(path))
end)
