-- A LAppS-protocol service (README, "LAppS protocol"): ws://HOST:PORT/lapps
--   eightys server/lapps.lua -p 8080 -c 2
-- echo(...) answers with its params; subscribe() joins broadcast channel 1;
-- broadcast(...) sends its params to every subscriber (every worker) on channel 1.
local lapps = require("eightys.lapps")

local BROADCAST = 1 -- the channel of broadcast notifications

local service
service = lapps.service{
    echo = function(client, ...)
        return ...
    end,
    subscribe = function(client)
        service:join(client, BROADCAST)
        return true
    end,
    broadcast = function(client, ...)
        service:broadcast(BROADCAST, { ... })
        return true
    end,
    -- an answer after a delay, while the connection keeps serving notifications
    sleep = function(client, seconds)
        aio:await(aio:sleep(seconds))
        return "slept", WORKERID
    end,
}
service:listen("/lapps", { max_message = 1048576 })
