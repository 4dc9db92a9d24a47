-- A WAMP v2 router (README, "WAMP router"): ws://HOST:PORT/ws, realm "realm1",
-- subprotocols wamp.2.json, wamp.2.msgpack and wamp.2.cbor.
--   eightys server/wamp.lua -p 8080 -c 2
-- Every worker serves sessions; calls and events cross between workers.
local wamp = require("eightys.wamp")

local router = wamp.router{
    realms = {
        realm1 = {},                                  -- open: anonymous sessions
    },
}
router:listen("/ws", { max_message = 16 * 1024 * 1024 })

-- A procedure served by the router itself, in every worker.
router:register("realm1", "eightys.worker", function()
    return { WORKERID }
end)
