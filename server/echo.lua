-- Raw TCP echo server: every byte received is sent back.
--   eightys server/echo.lua -p 7000 -c 2
-- Defining on_data makes this a raw app: connections skip the HTTP protocol.

function on_data(elfd, childfd, data, length)
    net.write(elfd, childfd, data)
end
