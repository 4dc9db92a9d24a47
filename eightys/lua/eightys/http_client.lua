-- aio.lib.http_client: outgoing HTTP/1.1 requests (80s API, plus GET/POST
-- shortcuts). The exchange runs in Python (eightys/http_client.py): keep-alive
-- pool, Content-Length/chunked/until-close bodies, timeouts, https.
--
--   local http_client = require("aio.lib.http_client")
--   local res = aio:await(http_client:GET("http://127.0.0.1:8080/echo?name=x"))
--   if iserror(res) then ... end -- {error = "..."}
--   print(res.status, res.headers["content-type"], res.body)

local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local error = error
local str_match = string.match
local str_find = string.find
local concat = table.concat

local host = require("eightys.host")

local http_client = {}

--- @alias httpresponse {status: integer, status_line: string, headers: table<string, string>, body: string, error: string|nil}

--- Perform a request. params: method (default GET), url, query (table, added
--- to the URL), headers (table), body (string), timeout (seconds, default 30),
--- redirects (how many to follow, default 0: redirects are returned as is),
--- keepalive (default true: the connection goes back to the pool), ca_file (PEM
--- CA certificates that https servers are checked against instead of the system's),
--- verify (false: https without any certificate check; only for tests and
--- servers you reach over a trusted network). Resolves with the response table,
--- or {error = "..."}.
--- @param params {method: string|nil, url: string, query: table|nil, headers: table|nil, body: string|nil, timeout: number|nil, redirects: integer|nil, keepalive: boolean|nil, ca_file: string|nil, verify: boolean|nil}
--- @return aiopromise
function http_client:request(params)
    if type(params) ~= "table" or type(params.url) ~= "string" then
        error("http_client:request{url = ..., method = ...} expected", 2)
    end
    local url = params.url
    if type(params.query) == "table" then
        local parts = {}
        for k, v in pairs(params.query) do
            parts[#parts + 1] = codec.url_encode(tostring(k)) .. "=" .. codec.url_encode(tostring(v))
        end
        table.sort(parts)
        if #parts > 0 then
            url = url .. (str_find(url, "?", 1, true) and "&" or "?") .. concat(parts, "&")
        end
    end
    local headers = {}
    for k, v in pairs(params.headers or {}) do headers[tostring(k)] = tostring(v) end
    local body = params.body
    if body ~= nil and type(body) ~= "string" then body = tostring(body) end
    return host.http_request((params.method or "GET"):upper(), url, headers, body,
        tonumber(params.timeout), tonumber(params.redirects), params.keepalive, params.ca_file,
        params.verify ~= false)
end

--- GET url; options as in http_client:request (headers, timeout, redirects, ...).
--- @return aiopromise
function http_client:GET(url, options)
    local params = {}
    for k, v in pairs(options or {}) do params[k] = v end
    params.method, params.url = "GET", url
    return self:request(params)
end

--- POST body to url (a table body is sent as JSON); options as in request.
--- @return aiopromise
function http_client:POST(url, body, options)
    local params = {}
    for k, v in pairs(options or {}) do params[k] = v end
    params.method, params.url = "POST", url
    if type(body) == "table" then
        params.body = codec.json_encode(body)
        params.headers = params.headers or {}
        local has_type = false
        for k in pairs(params.headers) do
            if k:lower() == "content-type" then has_type = true end
        end
        if not has_type then params.headers["Content-Type"] = "application/json" end
    else
        params.body = body
    end
    return self:request(params)
end

--- Split a URL (80s): protocol, host, port, path (nil for each if it is not http(s)).
function http_client:parse_url(url)
    local protocol, host_name, script = str_match(url, "^(https?)://([^/]+)(/?.*)$")
    if not protocol then return nil, nil, nil, nil end
    if script == "" then script = "/" end
    local name, port = str_match(host_name, "^(.-):(%d+)$")
    if not name then
        name, port = host_name, protocol == "http" and 80 or 443
    end
    return protocol, name, tonumber(port), script
end

return http_client
