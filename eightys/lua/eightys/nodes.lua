-- aio.lib.nodes: named connections and broadcast to them (80s API).
--
-- A node is one worker: {host, port, worker_id} (nodes:get_node interns them,
-- so a node can be compared with ==). A name is {node, group, ..., leaf}:
-- nodes:register(sock, {"chat", "alice"}) names sock {this_node, "chat", "alice"}.
-- nodes:broadcast(selector, except, message) writes message to every socket
-- whose name starts with selector:
--   {nodes:get_node(), "chat"}     sockets of this worker
--   {nodes:get_node(h, p, w), ...} sockets of worker w of server h:p: the other
--                                  workers of this server get it through the
--                                  worker channel; other servers by HTTP
--   {nodes.global, "chat"}         every worker of this server, plus (with a
--                                  master) every server registered there
-- Between servers, with --redis: through the worker's Redis bus (redis_bus.py),
-- the path aio:publish takes. Each worker listens, while it has named sockets, on
-- "all", on "g:GROUP" for each GROUP (the first part of a name after the node)
-- its sockets are named in, and on "n:HOST:PORT:WORKER", its own node: a global
-- broadcast goes to the group's channel (the other servers' workers deliver it to
-- their sockets under the selector; this server's get it by the worker channel),
-- a broadcast to another server's node to that node's channel.
-- Without Redis the 80s protocol is spoken: HTTP GET/POST/PUT/DELETE /nodes
-- with Message/From/To/Except/Authorization headers, so eightys and 80s nodes
-- can talk to each other. nodes:start{authorization = secret, master = {h, p, w}}
-- serves /nodes and names the master that keeps the global registry (with
-- --redis, the master is not used for broadcasts).

require("aio.aio")
local http_client = require("eightys.http_client")
local host = require("eightys.host")

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local getmetatable = getmetatable
local setmetatable = setmetatable
local str_format = string.format
local unpack = unpack or table.unpack
local json_encode = codec.json_encode
local json_decode = codec.json_decode

local MAIL_MARKER = "\0nodes" -- receiver_fd of the worker-channel mail this module sends
local BUS = host.bus_enabled -- --redis: the other servers through Redis
local bus_listen = host.bus_listen
local bus_publish = host.bus_publish

SELF_NODE = SELF_NODE or { NODE, PORT, WORKERID }
local SELF_NODE = SELF_NODE
local MESSAGE_BASE = str_format("%s.%d.%d", NODE, PORT, WORKERID)

nodes = nodes or {
    names = {},
    master = nil,
    global = nil,
    nodes = { [NODE_ID] = SELF_NODE },
    authorization = "-",
    message_id = 1,
}
local nodes = nodes
-- bus channel -> how many of this worker's sockets make it listen there
nodes.listening = nodes.listening or {}

local function is_socket(v)
    return type(v) == "table" and getmetatable(v) == aiosocket
end

--- The node table for (host, port, worker); no arguments: this worker.
--- Same arguments give the same table.
--- @return table
function nodes:get_node(node, port, id)
    if not node or node == NODE_ID or (node == NODE and port == PORT and id == WORKERID) then
        return self.nodes[NODE_ID]
    end
    port = port or PORT
    id = id or WORKERID
    local handle = str_format("%s.%d.%d", node, port, id)
    local hit = self.nodes[handle]
    if hit then return hit end
    hit = { node, port, id }
    self.nodes[handle] = hit
    return hit
end

-- Is node a worker of this server (same host name and port)?
local function on_this_server(node)
    return node[1] == NODE and node[2] == PORT
end

local function master_is_remote()
    local master = nodes.master
    return not BUS and master ~= nil and not on_this_server(master)
end

-- The bus channel of a node (a worker of some server).
local function node_channel(node)
    return str_format("n:%s:%d:%d", tostring(node[1]), tonumber(node[2]) or 0,
        tonumber(node[3]) or 0)
end
local SELF_CHANNEL = node_channel(SELF_NODE)

local function listen(channel, delta)
    local counts = nodes.listening
    local before = counts[channel] or 0
    local after = before + delta
    counts[channel] = after > 0 and after or nil
    if before == 0 and after > 0 then
        bus_listen(channel, true)
    elseif before > 0 and after <= 0 then
        bus_listen(channel, false)
    end
end

-- A socket of this worker got (delta 1) or lost (-1) its name: the bus channels
-- that reach it.
local function track(name, delta)
    if not BUS or name[1] ~= SELF_NODE then return end
    listen("all", delta)
    listen(SELF_CHANNEL, delta)
    if name[2] ~= nil then listen("g:" .. tostring(name[2]), delta) end
end

--- Name sock: {this_node, unpack(name)} (or {node, unpack(name, 2)} with node).
--- Returns false if a prefix of the name is already a socket's full name.
--- @param fd aiosocket
--- @param name table
--- @param node table|nil
--- @return boolean
function nodes:register(fd, name, node)
    local full
    if node then
        full = { unpack(name) }
        full[1] = node
    else
        full = { self:get_node(), unpack(name) }
    end
    if fd.name then self:unregister(fd) end
    local root = self.names
    for i = 1, #full - 1 do
        local part = full[i]
        local hit = root[part]
        if is_socket(hit) or (hit ~= nil and type(hit) ~= "table") then return false end
        if hit == nil then
            hit = {}
            root[part] = hit
        end
        root = hit
    end
    root[full[#full]] = fd
    fd.name = full
    if not fd.delegate then track(full, 1) end
    if not node and master_is_remote() then
        self:announce(full, { self.master }, nil, "POST", "/nodes", "")
    end
    return true
end

--- Remove sock's name.
function nodes:unregister(fd)
    local name = fd.name
    if not name then return end
    fd.name = nil
    if not fd.delegate then track(name, -1) end
    local root = self.names
    for i = 1, #name do
        local part = name[i]
        if i == #name then
            if root[part] == fd or not is_socket(fd) then root[part] = nil end
        else
            local hit = root[part]
            if type(hit) ~= "table" or is_socket(hit) then return end
            root = hit
        end
    end
end

local function collect(out, tree, depth)
    if depth > 32 then return end
    for _, v in pairs(tree) do
        if is_socket(v) then
            out[#out + 1] = v
        elseif type(v) == "table" then
            collect(out, v, depth + 1)
        end
    end
end

--- Every socket of this worker whose name starts with selector.
--- @param selector table
--- @return aiosocket[]
function nodes:get_named_fds(selector)
    local root = self.names
    for i = 1, #selector do
        local hit = root[selector[i]]
        if i == #selector then
            if is_socket(hit) then return { hit } end
            local out = {}
            if type(hit) == "table" then collect(out, hit, 0) end
            return out
        end
        if type(hit) ~= "table" or is_socket(hit) then return {} end
        root = hit
    end
    local out = {}
    collect(out, root, 0)
    return out
end

--- Send one /nodes request to the server of the node selector[1] names
--- (the master for nodes.global). Resolves with the HTTP response.
--- @return aiopromise
function nodes:announce(from, selector, except, method, endpoint, message)
    local node = selector[1]
    local host_name, port = node[1], node[2]
    local to = { unpack(selector) }
    if node[1] == "*" then
        if not self.master then return aio:resolved(make_error("no master node")) end
        host_name, port = self.master[1], self.master[2]
        -- 80s: a query of the registry names the rest; a PUT (eightys) keeps the
        -- global node, so the master delivers to its own sockets
        if method ~= "PUT" then table.remove(to, 1) end
    end
    local message_id = str_format("%s.%d", MESSAGE_BASE, self.message_id)
    self.message_id = self.message_id + 1
    local except_text = "-"
    if type(except) == "string" then
        except_text = except
    elseif type(except) == "table" then
        except_text = json_encode(except)
    end
    if host_name == "localhost" then host_name = "127.0.0.1" end
    return http_client:request({
        method = method,
        url = str_format("http://%s:%d%s", host_name, port, endpoint),
        headers = {
            Message = message_id, From = json_encode(from), To = json_encode(to),
            Except = except_text, Authorization = self.authorization,
        },
        body = message,
        timeout = 10,
    })
end

local function except_key(except)
    if type(except) == "table" then return json_encode(except) end
    return except
end

-- Write message to this worker's sockets under selector, except the one named except_text.
local function deliver_local(self, selector, except_text, message, close)
    for _, fd in ipairs(self:get_named_fds(selector)) do
        if not except_text or json_encode(fd.name) ~= except_text then
            if fd.delegate then -- registered here by another server: forward it there
                local target = { unpack(fd.delegate) }
                target[1] = self:get_node(unpack(target[1]))
                self:broadcast(target, except_text, message, close)
            else
                pcall(fd.write, fd, message, close)
            end
        end
    end
end

-- Through the worker channel: worker `target` (or "*") delivers to its own sockets.
local function mail_workers(target, rest, except_text, message, close)
    aio:mail({ worker = target, target = MAIL_MARKER,
               message = { op = "deliver", rest = rest, except = except_text or false,
                           message = message, close = close or false } })
end

-- To the other servers: their workers listening on channel deliver to their
-- sockets under rest. True, or nil, err (Redis down: at once).
local function bus_send(channel, rest, except_text, message, close)
    local head = json_encode({ rest = codec.array(rest), except = except_text or false,
                               close = close or false })
    return bus_publish(channel, head .. "\n" .. message)
end

if BUS then
    host.bus_setup(function(channel, data)
        local cut = data:find("\n", 1, true)
        local head = cut and json_decode(data:sub(1, cut - 1))
        if type(head) ~= "table" or type(head.rest) ~= "table" then return end
        deliver_local(nodes, { SELF_NODE, unpack(head.rest) }, head.except or nil,
            data:sub(cut + 1), head.close or nil)
    end)
end

-- Every worker of this server (this one included) delivers to its sockets under rest.
local function deliver_server(self, rest, except_text, message, close)
    for w = 0, WORKERS - 1 do
        if w ~= WORKERID then mail_workers(w, rest, except_text, message, close) end
    end
    deliver_local(self, { SELF_NODE, unpack(rest) }, except_text, message, close)
end

--- Write message to every socket whose name starts with selector (see the top
--- of this file), except the socket named except (a name table, or its JSON).
--- With --redis, a broadcast that goes to other servers returns true, or nil, err
--- at once when Redis is down (this server's sockets get the message anyway).
--- @param selector table
--- @param except table|string|nil
--- @param message string
--- @param close boolean|nil close each socket after the write
function nodes:broadcast(selector, except, message, close)
    local node = selector[1]
    local except_text = except_key(except)
    if node == nil or node == SELF_NODE or type(node) ~= "table" or #node ~= 3 then
        return deliver_local(self, selector, except_text, message, close)
    end
    local rest = { unpack(selector, 2) }
    if node == self.global then
        -- every worker of this server, and the sockets other servers registered
        -- here (when this is their master: each worker keeps a copy of the registry)
        deliver_server(self, rest, except_text, message, close)
        deliver_local(self, selector, except_text, message, close)
        if BUS then
            return bus_send(rest[1] ~= nil and "g:" .. tostring(rest[1]) or "all", rest,
                except_text, message, close)
        end
        if master_is_remote() then
            -- the master's own sockets ...
            self:announce(SELF_NODE, { self.global, unpack(rest) }, except_text, "PUT", "/nodes",
                message)
            -- ... and every other server registered there (80s protocol)
            local master = self.master
            self:announce(SELF_NODE, selector, nil, "GET", "/nodes", "")(function(res)
                local list = type(res) == "table" and res.status == 200 and json_decode(res.body)
                if type(list) ~= "table" then return end
                for _, entry in ipairs(list) do
                    local delegate = type(entry) == "table" and entry.delegate
                    if type(delegate) == "table" and type(delegate[1]) == "table" then
                        local target = self:get_node(unpack(delegate[1]))
                        if not on_this_server(target)
                                and not (target[1] == master[1] and target[2] == master[2]) then
                            delegate[1] = target
                            self:broadcast(delegate, except_text, message, close)
                        end
                    end
                end
            end)
        end
        return
    end
    if on_this_server(node) then
        if node[3] == WORKERID then
            return deliver_local(self, { SELF_NODE, unpack(rest) }, except_text, message, close)
        end
        return mail_workers(node[3], rest, except_text, message, close)
    end
    if BUS then return bus_send(node_channel(node), rest, except_text, message, close) end
    self:announce(SELF_NODE, selector, except_text, "PUT", "/nodes", message)
end

-- A name another server registered here (POST /nodes), kept by every worker.
local function register_remote(self, from, delegate)
    local origin = from[1]
    local name = { unpack(from) }
    name[#name + 1] = str_format("%s.%d.%d", tostring(origin[1]), tonumber(origin[2]) or 0,
        tonumber(origin[3]) or 0)
    local remote = setmetatable({ delegate = delegate }, aiosocket)
    self:register(remote, name, self.global)
    return remote
end

local function unregister_remote(self, from)
    local origin = from[1]
    local name = { unpack(from) }
    name[1] = self.global
    name[#name + 1] = str_format("%s.%d.%d", tostring(origin[1]), tonumber(origin[2]) or 0,
        tonumber(origin[3]) or 0)
    self:unregister({ name = name })
    return name
end

-- the registry change reaches the other workers of this server
local function replicate(op, from, delegate)
    for w = 0, WORKERS - 1 do
        if w ~= WORKERID then
            aio:mail({ worker = w, target = MAIL_MARKER,
                       message = { op = op, from = json_encode(from),
                                   delegate = json_encode(delegate or false) } })
        end
    end
end

aio.internal_mail[MAIL_MARKER] = function(sender, mail)
    if type(mail) ~= "table" then return end
    if mail.op == "register" or mail.op == "unregister" then
        local from = json_decode(mail.from)
        if type(from) ~= "table" or type(from[1]) ~= "table" then return end
        if mail.op == "register" then
            register_remote(nodes, from, json_decode(mail.delegate))
        else
            unregister_remote(nodes, from)
        end
        return
    end
    local rest = {}
    for i = 1, #(mail.rest or {}) do rest[i] = mail.rest[i] end
    deliver_local(nodes, { SELF_NODE, unpack(rest) }, mail.except or nil, mail.message,
        mail.close or nil)
end

-- /nodes request checks (80s protocol); returns message_id, from, to or nil.
local function validate(self, fd, headers)
    local message_id = headers.message
    if self.authorization and headers.authorization ~= self.authorization then
        self:response(fd, "401 Unauthorized", message_id, "text/plain", "unauthorized")
        return nil
    end
    local from = headers.from and json_decode(headers.from)
    local to = headers.to and json_decode(headers.to)
    if not (message_id and headers.except and type(from) == "table" and type(to) == "table") then
        self:response(fd, "400 Bad Request", message_id, "text/plain", "invalid request")
        return nil
    end
    return message_id, from, to
end

--- Answer a /nodes request (80s protocol).
function nodes:response(fd, status, message_id, mime, body)
    return fd:http_response(status, { message = message_id or "-", ["content-type"] = mime }, body)
end

--- Serve /nodes and set the authorization secret and the master:
--- params {authorization = "secret", master = {host, port, worker_id}}.
function nodes:start(params)
    params = params or {}
    self.authorization = params.authorization or "-"
    if params.master then self.master = self:get_node(unpack(params.master)) end

    aio:http_get("/nodes", function(fd, query, headers)
        local message_id, _, to = validate(self, fd, headers)
        if not message_id then return end
        local found = self:get_named_fds({ self.global, unpack(to) })
        local list = {}
        for i, entry in ipairs(found) do list[i] = { delegate = entry.delegate, name = entry.name } end
        self:response(fd, "200 OK", message_id, "application/json",
            codec.array(list))
    end)

    aio:http_post("/nodes", function(fd, query, headers)
        local message_id, from = validate(self, fd, headers)
        if not message_id then return end
        if type(from[1]) ~= "table" then
            return self:response(fd, "400 Bad Request", message_id, "text/plain", "invalid request")
        end
        local delegate = json_decode(headers.from)
        local remote = register_remote(self, from, delegate)
        replicate("register", from, delegate)
        self:response(fd, "200 OK", message_id, "application/json",
            { delegate = remote.delegate, name = remote.name })
    end)

    aio:http_any("DELETE", "/nodes", function(fd, query, headers)
        local message_id, from = validate(self, fd, headers)
        if not message_id then return end
        if type(from[1]) ~= "table" then
            return self:response(fd, "400 Bad Request", message_id, "text/plain", "invalid request")
        end
        local name = unregister_remote(self, { unpack(from) })
        replicate("unregister", from)
        self:response(fd, "200 OK", message_id, "application/json",
            { delegate = json_decode(headers.from), name = name })
    end)

    aio:http_any("PUT", "/nodes", function(fd, query, headers, body)
        local message_id, _, to = validate(self, fd, headers)
        if not message_id then return end
        if type(to[1]) ~= "table" then
            return self:response(fd, "400 Bad Request", message_id, "text/plain", "invalid request")
        end
        local except = headers.except ~= "-" and headers.except or nil
        to[1] = self:get_node(unpack(to[1]))
        if to[1] == self.global then
            -- from a server whose master this is: this server's own sockets only
            -- (the sender reaches the other registered servers itself)
            deliver_server(self, { unpack(to, 2) }, except, body or "")
        else
            self:broadcast(to, except, body or "")
        end
        self:response(fd, "201 Created", message_id, "text/plain", "")
    end)
end

aio:register_close_handler("nodes", function(fd)
    if fd.name and master_is_remote() then
        nodes:announce(fd.name, { nodes.master }, nil, "DELETE", "/nodes", "")
    end
    nodes:unregister(fd)
end)

nodes.global = nodes:get_node("*", 0, 0)

return nodes
