-- tests/test_mailbox.py: aio:mailbox / aio:post between workers, next to the app's
-- own on_message hook.
GOT = GOT or {}
aio:mailbox("test.box", function(sender, data)
    GOT[#GOT + 1] = "box from " .. sender .. ": " .. data
end)
function on_message(sender, _, _, _, _, _, message)
    GOT[#GOT + 1] = "hook from " .. sender .. ": " .. tostring(message)
end
aio:http_get("/post", function(fd, query)
    local q = aio:parse_query(query)
    local target = q.to == "*" and "*" or tonumber(q.to)
    local ok, err
    if q.kind == "mail" then
        ok, err = net.mail(target, q.data)
    elseif q.kind == "nobox" then
        ok, err = aio:post(target, "no.such.box", q.data)
    else
        ok, err = aio:post(target, "test.box", q.data)
    end
    fd:http_response(200, "text/plain", tostring(ok) .. " " .. tostring(err) .. " worker " .. WORKERID)
end)
aio:http_get("/got", function(fd)
    fd:http_response(200, "text/plain", "worker " .. WORKERID .. "\n" .. table.concat(GOT, "\n"))
end)
