-- aio.lib.dns: name lookups that never block the worker (80s API). eightys
-- resolves through the event loop's resolver (getaddrinfo in a thread pool),
-- with the system's configuration (/etc/hosts, resolv.conf), instead of 80s's
-- DNS-over-HTTPS; results are cached for `ttl` seconds.
--
--   local dns = require("aio.lib.dns")
--   local res = aio:await(dns:get_ip("localhost", "A")) -- {ip = "127.0.0.1"} or {error = ...}

local host = require("eightys.host")

local dns = _dns or { cache = {}, ttl = 60 }
_dns = dns

--- Pin a record: dns:get_ip(host_name, record_type) answers value from now on.
function dns:add_record(host_name, record_type, value)
    self.cache[host_name] = self.cache[host_name] or {}
    self.cache[host_name][record_type] = value
end

--- The address of host_name: a promise of {ip = "..."} or {error = "..."}.
--- record_type is "A" (default) or "AAAA".
--- @return aiopromise
function dns:get_ip(host_name, record_type)
    record_type = record_type or "A"
    if type(host_name) ~= "string" then error("dns:get_ip(host_name[, record_type]) expects a string", 2) end
    if host_name:match("^%d+%.%d+%.%d+%.%d+$") or host_name:find(":", 1, true) then
        return aio:resolved({ ip = host_name })
    end
    local pinned = self.cache[host_name]
    if pinned and pinned[record_type] then
        return aio:resolved({ ip = pinned[record_type] })
    end
    return aio:cached("dns", host_name .. ":" .. record_type, function()
        return host.resolve(host_name, record_type)
    end, self.ttl)
end

return dns
