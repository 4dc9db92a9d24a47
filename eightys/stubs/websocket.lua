---@meta eightys.websocket
-- WebSocket routes (aio:websocket, fd:websocket), the ws object and pub/sub.

---@class websocket
---@field id integer the connection handle
---@field protocol string|nil the negotiated subprotocol
---@field params table<string, string> path parameters of the route
---@field path string the request path
---@field scheme "wss"|"ws" "wss" over TLS
---@field closed boolean true once the close handler has run (or is about to)
local websocket = {}

---Queue one message: text, or binary with `binary` true; a table is sent as JSON text.
---@param data string|table
---@param binary? boolean
---@return boolean|nil ok
---@return string|nil err "closed" or "send buffer full"
function websocket:send(data, binary) end

---Start the closing handshake (default 1000; reason at most 123 bytes).
---@param code? integer
---@param reason? string
---@return boolean
function websocket:close(code, reason) end

---Send a ping (at most 125 bytes).
---@param data? string
---@return boolean
function websocket:ping(data) end

---Receive what aio:publish sends to `channel`, from any worker of this server (and
---of every server sharing its --redis).
---@param channel string
---@return boolean
function websocket:subscribe(channel) end

---Stop receiving `channel`.
---@param channel string
---@return boolean
function websocket:unsubscribe(channel) end

---@class websockethandlers
---@field open? fun(ws: websocket, query: string, headers: table<string, string>)
---@field message? fun(ws: websocket, data: string, binary: boolean)
---@field close? fun(ws: websocket, code: integer, reason: string)
local handlers = {}

---After the handshake, before any message.
---@param ws websocket
---@param query string
---@param headers table<string, string>
function handlers.open(ws, query, headers) end

---One whole message.
---@param ws websocket
---@param data string
---@param binary boolean
function handlers.message(ws, data, binary) end

---Once per connection, whoever closed it.
---@param ws websocket
---@param code integer
---@param reason string
function handlers.close(ws, code, reason) end

---@alias websocketoptions {protocols?: string[], max_message?: integer, compress?: boolean, idle_timeout?: number, origins?: string[], send_buffer?: integer, allow?: string|string[], deny?: string|string[]}

---A WebSocket route ("/rooms/:room" parameters allowed); other requests on the path get 426.
---@param path string
---@param handlers websockethandlers|"hooks"
---@param options? websocketoptions
function aio:websocket(path, handlers, options) end

---Send to every subscriber of `channel` in every worker of this server and, with
-----redis, of every server sharing that Redis. `options`: true (binary) or
---{binary = true, scope = "server"} ("server": this server only).
---@param channel string
---@param data string|table
---@param options? boolean|{binary?: boolean, scope?: "all"|"server"}
---@return integer queued_here
---@return string|nil err why it could not go to the other servers (--redis)
function aio:publish(channel, data, options) end

---Inside an HTTP handler: switch this request to a WebSocket; ws, or nil, err.
---@param handlers websockethandlers|"hooks"
---@param options? websocketoptions
---@return websocket|nil
---@return string|nil err
function httprequest:websocket(handlers, options) end
