-- A small line protocol over raw TCP, written with aio:buffered_cor.
--   eightys server/lines.lua -p 7000 -c 2
--   printf 'PING\nUPPER hello\nWORKER\nQUIT\n' | nc 127.0.0.1 7000
--
-- Commands (one per line, answered with one line):
--   PING            -> PONG
--   UPPER text      -> TEXT
--   SLOW s text     -> text, after s seconds (the worker keeps serving others)
--   WORKER          -> this worker's WORKERID
--   COUNT           -> how many lines this worker has answered (a global: survives reloads)
--   QUIT            -> BYE, then the server closes the connection
-- A line longer than 1024 bytes gets "ERR line too long" and the connection closes.

answered = answered or 0 -- `x = x or ...`: keep the value when the script is reloaded

local MAX_LINE = 1024

local function answer(line)
    local command, rest = line:match("^(%u+)%s*(.-)%s*$")
    if command == "PING" then
        return "PONG"
    elseif command == "UPPER" then
        return rest:upper()
    elseif command == "SLOW" then
        local seconds, text = rest:match("^(%d+%.?%d*)%s+(.*)$")
        if not seconds then return "ERR usage: SLOW seconds text" end
        aio:await(aio:sleep(tonumber(seconds)))
        return text
    elseif command == "WORKER" then
        return tostring(WORKERID)
    elseif command == "COUNT" then
        return tostring(answered)
    end
    return "ERR unknown command"
end

function on_accept(elfd, parentfd, childfd)
    local sock = aio:wrap(childfd)
    aio:buffered_cor(sock, function()
        while true do
            local line, err = coroutine.yield("\n", MAX_LINE)
            if err == "overflow" then
                sock:write("ERR line too long\n", true)
                return
            elseif not line then
                return -- eof: the client went away
            end
            line = line:gsub("\r$", "")
            if line == "QUIT" then
                sock:write("BYE\n", true)
                return
            end
            answered = answered + 1
            sock:write(answer(line) .. "\n")
        end
    end)
end
