-- The WAMP router of tests/test_wamp.py (and test_wamp_redis.py): an open realm, a realm with WAMP-CRA and
-- ticket users, and procedures/subscriptions served from Lua.
local wamp = require("eightys.wamp")

local router = wamp.router{
    limits = { calls = 8, subscriptions = 50, registrations = 50 },
    -- across servers when started with --redis (tests/test_wamp_redis.py): a prefix
    -- of the test's own, quick heartbeats
    redis = { prefix = os.getenv("WAMP_REDIS_PREFIX"), heartbeat = tonumber(os.getenv("WAMP_HEARTBEAT")) },
    realms = {
        realm1 = {},
        disclosed = { disclose_caller = true, disclose_publisher = true },
        secure = {
            wampcra = { joe = { secret = "joe-secret", role = "frontend" } },
            ticket = { bob = { ticket = "bob-ticket", role = "backend" } },
        },
    },
}
router:listen("/ws")

for _, realm in ipairs({ "realm1", "disclosed" }) do
    router:register(realm, "lua.add", function(args)
        return { args[1] + args[2] }
    end)
    router:register(realm, "lua.kw", function(args, kwargs)
        return { name = kwargs.name, worker = WORKERID }
    end)
    router:register(realm, "lua.fail", function(args)
        return wamp.error("com.example.oops", { "no luck", args[1] })
    end)
    router:register(realm, "lua.raise", function()
        error("boom") -- MARK raise
    end)
    router:register(realm, "lua.progress", function(args, kwargs, details)
        for i = 1, args[1] do
            if details.progress then details.progress({ i }) end
            aio:await(aio:sleep(0.01))
        end
        return { "done" }
    end)
    -- Lua calling a procedure a client registered (maybe in another worker).
    router:register(realm, "lua.relay", function(args)
        local results, err, eargs = aio:await(router:call(realm, "client.echo", args))
        if results == nil then return wamp.error(err, eargs) end
        return { "relayed", results[1], WORKERID }
    end)
    -- Lua subscribing: every event on lua.in comes back on lua.out, with our worker.
    router:subscribe(realm, "lua.in", function(args, kwargs, details)
        router:publish(realm, "lua.out", { args[1], WORKERID })
    end)
end
