---@meta
-- WAMP v2 router, LAppS protocol and their codecs (eightys.wamp, eightys.lapps,
-- eightys.msgpack, eightys.cbor). See the README's "WAMP router" and "LAppS protocol".

---@class wamp
local wamp = {}

---A WAMP router; `options.realms` configures realms (default `realm1`);
---`options.redis`: false, a Redis URL or `{ url?, prefix?, heartbeat? }` (default:
---the server's --redis): the routers of every server on that Redis are one.
---@param options? table
---@return wamprouter
function wamp.router(options) end

---An error a procedure raises to answer its caller with a WAMP ERROR.
---@param uri string
---@param args? table
---@param kwargs? table
function wamp.error(uri, args, kwargs) end

---@class wamprouter
local wamprouter = {}

---Serve WAMP on the WebSocket path (subprotocols wamp.2.json, wamp.2.msgpack and wamp.2.cbor).
---@param path string
---@param ws_options? table
function wamprouter:listen(path, ws_options) end

---Register a procedure implemented in Lua; returns its registration id.
---@param realm string
---@param procedure string
---@param fn fun(args: table, kwargs: table, details: table): any
---@param options? table
---@return integer|nil id
---@return string? err
function wamprouter:register(realm, procedure, fn, options) end

---@param realm string
---@param id integer
function wamprouter:unregister(realm, id) end

---Subscribe a Lua function to a topic; returns a handle for unsubscribe.
---@param realm string
---@param topic string
---@param fn fun(args: table, kwargs: table, details: table)
---@param options? table
---@return any handle
function wamprouter:subscribe(realm, topic, fn, options) end

---@param handle any
function wamprouter:unsubscribe(handle) end

---Publish an event from Lua.
---@param realm string
---@param topic string
---@param args? table
---@param kwargs? table
---@param options? table
function wamprouter:publish(realm, topic, args, kwargs, options) end

---Call a procedure from Lua (any callee, any worker): a promise of the result.
---@param realm string
---@param procedure string
---@param args? table
---@param kwargs? table
---@param options? table
---@return aiopromise
function wamprouter:call(realm, procedure, args, kwargs, options) end

---Sessions joined to `realm` in every worker (of every server, with Redis).
---@param realm string
---@return integer
function wamprouter:session_count(realm) end

---This worker's address among the Redis peers (`RUN:WORKER:ID`), nil without Redis.
---@return string|nil
function wamprouter:peer_address() end

---@class lapps
local lapps = {}

---A LAppS service: `methods` maps method names to `fn(params, client)`.
---@param methods table<string, function>
---@param options? table
---@return lappsservice
function lapps.service(methods, options) end

---An error a method raises to answer with a LAppS error object.
---@param code integer
---@param message string
---@param data? any
function lapps.error(code, message, data) end

---@class lappsservice
local lappsservice = {}

---Serve the service on the WebSocket path.
---@param path string
---@param ws_options? table
function lappsservice:listen(path, ws_options) end

---Send an out-of-order notification on channel `cid` to one client.
function lappsservice:notify(client, cid, message) end

---Add a client to channel `cid` (broadcasts reach it).
function lappsservice:join(client, cid) end

---Remove a client from channel `cid`.
function lappsservice:leave(client, cid) end

---Send `message` to every client on channel `cid`.
function lappsservice:broadcast(cid, message) end

---@class msgpack
local msgpack = {}
---@param value any
---@return string
function msgpack.encode(value) end
---@param data string
---@return any
function msgpack.decode(data) end
