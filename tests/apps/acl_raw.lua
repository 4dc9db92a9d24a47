-- A raw app for tests/test_acl.py: on_accept counts accepted connections; a
-- client sending "count" gets the count back (so a denied connection can be
-- shown never to have reached Lua).
ACCEPTS = ACCEPTS or 0

function on_accept(elfd, childfd)
    ACCEPTS = ACCEPTS + 1
end

function on_data(elfd, childfd, data)
    if data:find("count", 1, true) then
        net.write(elfd, childfd, tostring(ACCEPTS) .. "\n")
    else
        net.write(elfd, childfd, data)
    end
end
