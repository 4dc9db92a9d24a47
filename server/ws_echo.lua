-- WebSocket echo: every message comes back as it came (text or binary). Used by
-- the Autobahn conformance cases and the benchmark (scripts/ws_bench.py).
--   eightys server/ws_echo.lua -p 9001        # ws://127.0.0.1:9001/ (any path)
-- Messages up to 16 MiB (Autobahn's section 9 sends those), permessage-deflate on.
-- For the fan-out benchmark: /sub/NAME subscribes to channel NAME (the first message
-- says which worker serves it), a message to /pub/NAME is published to NAME.

local echo = {
    message = function(ws, data, binary)
        ws:send(data, binary)
    end,
}
local options = { compress = true, max_message = 16 * 1024 * 1024, send_buffer = 16 * 1024 * 1024 }

aio:websocket("/", echo, options)
aio:websocket("/:any", echo, options) -- Autobahn clients connect to /runCase?...

aio:websocket("/sub/:channel", {
    open = function(ws)
        ws:subscribe(ws.params.channel)
        ws:send('{"worker": ' .. WORKERID .. '}')
    end,
})
aio:websocket("/pub/:channel", {
    message = function(ws, data, binary)
        aio:publish(ws.params.channel, data, binary)
    end,
})
