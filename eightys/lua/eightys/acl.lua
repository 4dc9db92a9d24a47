-- Route ACLs and the client address (see README, "Network ACLs").
--
--   aio:http_get("/admin", handler, { allow = { "10.0.0.0/8", "::1" }, deny = { "10.9.0.0/16" } })
--   aio:websocket("/feed", handlers, { allow = "127.0.0.1" })
--   fd:client_ip()   -- the address the ACLs check (behind --proxy-from: the forwarded client)
--
-- Deny wins: an address in `deny` is refused; else, if `allow` is given, only
-- addresses in it pass (an empty `allow` lets nobody in); without `allow` all
-- that is not denied pass. Networks are compiled once in Python
-- (eightys/acl.py, ipaddress) and decisions cached per address; a route
-- without options costs nothing (the guard is a wrapper around its handler).

local type = type
local pairs = pairs
local pcall = pcall
local tostring = tostring
local error = error

local aio = aio
local host = require("eightys.host")
local http = require("eightys.http")

local acl_new = host.acl_new
local acl_permits = host.acl_permits
local client_address = host.client_address

local _M = {}

local KNOWN = { allow = true, deny = true }
local TEXT = "text/plain; charset=utf-8"

local function cidr_list(value, name, level)
    if value == nil then return nil end
    if type(value) == "string" then return { value } end
    if type(value) ~= "table" then
        error("route option " .. name .. " must be a list of CIDR strings", level + 1)
    end
    return value
end

--- The ACL id for route options { allow = ..., deny = ... }, or nil when they
--- name no list. Misuse (an unknown key, a bad network) raises at `level`.
function _M.compile(opts, level)
    level = (level or 1) + 1
    if type(opts) ~= "table" then error("route options must be a table", level) end
    for key in pairs(opts) do
        if not KNOWN[key] then error("unknown route option " .. tostring(key), level) end
    end
    local allow, deny = cidr_list(opts.allow, "allow", level), cidr_list(opts.deny, "deny", level)
    if allow == nil and deny == nil then return nil end
    local id, err = acl_new(allow, deny)
    if id == nil then error(tostring(err), level) end
    return id
end

--- Answer 403 (the site's error page when the content server has one).
function _M.forbidden(fd)
    local page = aio.http_error_page
    if page then
        local ok, mime, body = pcall(page, 403, nil, fd)
        if ok and body then return fd:http_response(403, mime, body) end
    end
    return fd:http_response(403, TEXT, "Forbidden")
end
local forbidden = _M.forbidden

--- Whether ACL `id` lets the client of request `fd` in.
function _M.permits(id, fd)
    local headers = fd.headers
    return acl_permits(id, fd.fd, headers and headers["x-forwarded-for"])
end

--- `handler` behind ACL `id`: a refused client gets 403 and the handler never runs.
function _M.guard(handler, id)
    return function(fd, query, headers, body)
        if not acl_permits(id, fd.fd, headers and headers["x-forwarded-for"]) then
            return forbidden(fd)
        end
        fd[http.HANDLER] = handler -- the handler-timeout report names the app's function
        return handler(fd, query, headers, body)
    end
end

--- The client's address: the TCP peer, or behind a trusted proxy (--proxy-from)
--- the rightmost X-Forwarded-For hop that is not one; nil for a Unix socket.
--- IPv4 clients of a dual-stack (::) listener read as IPv4 ("127.0.0.1").
--- @return string|nil
function http.Request:client_ip()
    local headers = self.headers
    return client_address(self.fd, headers and headers["x-forwarded-for"])
end

return _M
