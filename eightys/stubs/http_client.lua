---@meta eightys.http_client
-- Outgoing HTTP/1.1 (require("aio.lib.http_client")).

---@alias httpresponse {status: integer, status_line: string, headers: table<string, string>, body: string, error: string|nil}
---@alias httpoptions {headers?: table<string, string>, query?: table, timeout?: number, redirects?: integer, keepalive?: boolean, ca_file?: string, verify?: boolean}

---@class http_client
local http_client = {}

---Perform a request; promise of an httpresponse or {error = ...}.
---@param params {method?: string, url: string, query?: table, headers?: table, body?: string, timeout?: number, redirects?: integer, keepalive?: boolean, ca_file?: string, verify?: boolean}
---@return aiopromise
function http_client:request(params) end

---GET url.
---@param url string
---@param options? httpoptions
---@return aiopromise
function http_client:GET(url, options) end

---POST body (a table is sent as JSON) to url.
---@param url string
---@param body string|table|nil
---@param options? httpoptions
---@return aiopromise
function http_client:POST(url, body, options) end

---protocol, host, port, path of a URL (nils if it is not http(s)).
---@param url string
---@return string|nil protocol
---@return string|nil host
---@return integer|nil port
---@return string|nil path
function http_client:parse_url(url) end

return http_client
