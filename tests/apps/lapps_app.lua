-- tests/test_lapps.py: a LAppS service with a failing method, typed errors and
-- client notifications (the example service is server/lapps.lua).
local lapps = require("eightys.lapps")

local notes = {}
local service
service = lapps.service{
    raise = function(client)
        error("kaput") -- MARK raise
    end,
    refuse = function(client, why)
        return lapps.error(42, "refused", { why = why })
    end,
    nothing = function(client) end,
    holes = function(client) return 1, nil, 3 end,
    -- notify this client on channel 7 before answering
    poke = function(client, text)
        service:notify(client, 7, { text })
        return "poked"
    end,
    notes = function(client) return notes end,
    on_open = function(client)
        -- too early: no request answered yet
        local ok, err = service:notify(client, 7, { "early" })
        notes[#notes + 1] = { "on_open", tostring(ok), err }
    end,
    on_notification = function(client, cid, message)
        notes[#notes + 1] = { cid, message }
    end,
}
service:listen("/svc")
