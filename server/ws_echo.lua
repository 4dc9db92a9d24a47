-- WebSocket echo: every message comes back as it came (text or binary). Used by
-- the Autobahn conformance cases and the benchmark (scripts/ws_bench.py).
--   eightys server/ws_echo.lua -p 9001        # ws://127.0.0.1:9001/ (any path)
-- Messages up to 16 MiB (Autobahn's section 9 sends those), permessage-deflate on.

local handlers = {
    message = function(ws, data, binary)
        ws:send(data, binary)
    end,
}
local options = { compress = true, max_message = 16 * 1024 * 1024, send_buffer = 16 * 1024 * 1024 }

aio:websocket("/", handlers, options)
aio:websocket("/:any", handlers, options) -- kosoku and Autobahn connect to /runCase?...
