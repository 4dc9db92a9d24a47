---@meta eightys.nodes
-- Named connections and broadcast (require("aio.lib.nodes"); sets the global `nodes`).

---@alias nodeid {[1]: string, [2]: integer, [3]: integer} host, port, worker

---@type nodeid
SELF_NODE = {}

---@class nodes
---@field global nodeid every node (the master's registry)
---@field master nodeid|nil
---@field authorization string
nodes = {}

---The node of (host, port, worker); no arguments: this worker.
---@param node? string
---@param port? integer
---@param id? integer
---@return nodeid
function nodes:get_node(node, port, id) end

---Name a socket {node, unpack(name)}; false if the name clashes.
---@param fd aiosocket
---@param name table
---@param node? nodeid
---@return boolean
function nodes:register(fd, name, node) end

---Remove a socket's name.
---@param fd aiosocket
function nodes:unregister(fd) end

---This worker's sockets whose name starts with selector.
---@param selector table
---@return aiosocket[]
function nodes:get_named_fds(selector) end

---Write message to every socket under selector except the one named except. With
-----redis, sockets of other servers are reached through Redis: true, or nil, err.
---@param selector table
---@param except table|string|nil
---@param message string
---@param close? boolean
---@return boolean|nil ok
---@return string|nil err
function nodes:broadcast(selector, except, message, close) end

---Send one /nodes request (80s protocol) to selector[1]'s server.
---@return aiopromise
function nodes:announce(from, selector, except, method, endpoint, message) end

---Answer a /nodes request.
---@return boolean
function nodes:response(fd, status, message_id, mime, body) end

---Serve /nodes; set the authorization secret and the master.
---@param params {authorization?: string, master?: {[1]: string, [2]: integer, [3]: integer}}
function nodes:start(params) end

return nodes
