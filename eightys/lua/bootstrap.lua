-- Runs first in every worker's Lua state (eightys/lua_runtime.py loads it).
--
-- It receives the host's private functions, finishes the global environment
-- (package.path, print, unpack, the aio library and the json codec) and returns
-- the dispatch table: the only Lua functions Python calls. Each dispatcher runs
-- user code under xpcall, so an error in an app never unwinds into Python; it is
-- logged with its traceback and the caller learns about it from the return value.

local host = ...

local xpcall = xpcall
local traceback -- eightys.errors.traceback (describes error(table) too), once package.path is set
local select = select
local tostring = tostring
local type = type
local next = next
local concat = table.concat
local log_error = host.log_error
local log_output = host.log_output

package.path = host.lua_path .. ";" .. package.path
traceback = require("eightys.errors").traceback
unpack = unpack or table.unpack
-- lupa's `python` helper table would let scripts reach into the worker's internals.
python = nil

--- print(...) goes through the worker's stdout, line by line, like Python's print.
function print(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do
        parts[i] = tostring((select(i, ...)))
    end
    log_output(concat(parts, "\t"))
end

local json = require("json")
codec.json_encode = json.encode
codec.json_decode = json.decode
codec.null = json.null
codec.array = json.array
codec.object = json.object

local aio = require("aio")
aio:_attach(host)
package.loaded["aio.aio"] = aio

-- Internal: library modules (eightys.httpd) reach the host's private functions here.
package.loaded["eightys.host"] = host
-- 80s module names
package.preload["aio.lib.httpd"] = function() return require("eightys.httpd") end
package.preload["aio.lib.mysql"] = function() return require("mysql") end
package.preload["aio.lib.orm"] = function() return require("orm") end
package.preload["aio.lib.templates"] = function() return require("eightys.templates80s") end
package.preload["aio.lib.http_client"] = function() return require("eightys.http_client") end
package.preload["aio.lib.dns"] = function() return require("eightys.dns") end
package.preload["aio.lib.nodes"] = function() return require("eightys.nodes") end

local http = require("eightys.http")
http.attach(host)
require("eightys.acl") -- route ACLs, fd:client_ip()

-- the rest of 80s's surface; then apps see Lua functions in net/codec/crypto
require("eightys.compat80s").wrap_globals()
local close_handlers = aio.close_handlers

local fds = aio.fds -- fd -> aiosocket for sockets the aio library owns
-- receiver_fd marker -> handler(sender, message) for mail between library modules
aio.internal_mail = aio.internal_mail or {}
local internal_mail = aio.internal_mail

local function report(where, err)
    log_error(where .. ": " .. tostring(err))
end

local dispatch = {}

--- One HTTP request (see eightys/lua/eightys/http.lua).
dispatch.http = http.dispatch
-- For Python's direct calls through the C API (eightys/lua_call.pyx): the request
-- entry it resumes threads with and the ones it calls when a handler waits or
-- fails, in the registry; and a Lua thread and its address, by which it checks that it found
-- this Lua state (Python's reference to the thread keeps it alive).
do
    local registry = debug.getregistry()
    registry["eightys.http.serve"] = http.serve
    registry["eightys.http.suspended"] = http.suspended
    registry["eightys.http.failed"] = http.failed
    dispatch.http_thread = coroutine.create(function() end)
    local thread_address = string.match(tostring(dispatch.http_thread), "0x(%x+)")
    dispatch.http_thread_address = thread_address and tonumber(thread_address, 16)
end
--- A handler did not answer within --handler-timeout (504 already sent): log it.
dispatch.http_timeout = http.timeout
--- A connection with handlers still working closed: forget them.
dispatch.http_gone = http.gone
--- The worker is stopping: responses from now on close their connection.
dispatch.http_draining = http.set_draining
--- A new second: the Date line responses carry.
dispatch.http_date = http.set_date

--- A connection was accepted; fd is its handle.
function dispatch.accept(fd)
    local hook = on_accept
    if hook == nil then return true end
    local ok, err = xpcall(hook, traceback, ELFD, PARENTFD, fd, 1)
    if ok then return true end
    report("on_accept", err)
    return false
end

--- Bytes arrived on fd. Returns false if the handler raised (Python closes fd).
function dispatch.data(fd, data)
    local sock = fds[fd]
    local ok, err
    if sock ~= nil then
        ok, err = xpcall(sock.on_data, traceback, sock, ELFD, fd, data, #data)
    else
        local hook = on_data
        if hook == nil then return true end
        ok, err = xpcall(hook, traceback, ELFD, fd, data, #data)
    end
    if ok then return true end
    report("on_data", err)
    return false
end

--- fd became writable again, or an outgoing connection completed.
function dispatch.write(fd)
    local sock = fds[fd]
    local ok, err
    if sock ~= nil then
        ok, err = xpcall(sock.on_write, traceback, sock, ELFD, fd)
    else
        local hook = on_write
        if hook == nil then return true end
        ok, err = xpcall(hook, traceback, ELFD, fd)
    end
    if ok then return true end
    report("on_write", err)
    return false
end

--- fd is closed (by the peer, by an error, or by net.close); err says why, if known.
function dispatch.close(fd, err)
    local sock = fds[fd]
    local ok, e
    if sock ~= nil then
        fds[fd] = nil
        sock.closed = true
        ok, e = xpcall(sock.on_close, traceback, sock, ELFD, fd, err)
        if next(close_handlers) ~= nil then aio:invoke_close(sock) end
    else
        local hook = on_close
        if hook == nil then return true end
        ok, e = xpcall(hook, traceback, ELFD, fd, err)
    end
    if ok then return true end
    report("on_close", e)
    return false
end

--- A message from another worker (net.mail / aio:mail), 80s argument order.
function dispatch.message(sender, sender_fd, receiver_fd, message)
    local internal = internal_mail[receiver_fd]
    if internal then -- library mail (aio.lib.nodes), not the app's
        local ok, err = xpcall(internal, traceback, sender, message)
        if not ok then report("mail handler", err) end
        return ok
    end
    if type(message) == "table" then
        local box = message[aio.MAILBOX_KEY]
        if box ~= nil then -- aio:post to a library's mailbox, not the app's hook
            local handler = aio.mailboxes[box]
            if handler == nil then return true end
            local ok, err = xpcall(handler, traceback, sender, message.data)
            if ok then return true end
            report("mailbox " .. tostring(box), err)
            return false
        end
    end
    local hook = on_message
    if hook == nil then return true end
    local ok, err = xpcall(hook, traceback, sender, ELFD, sender_fd, ELFD, receiver_fd, 5, message)
    if ok then return true end
    report("on_message", err)
    return false
end

--- Call a Lua callback from Python (timers, promise resolution) with its errors logged.
function dispatch.call(fn, ...)
    local ok, err = xpcall(fn, traceback, ...)
    if ok then return true end
    report("callback", err)
    return false
end

--- Call global hook `name` if it exists; returns true, or false and the traceback.
function dispatch.hook(name, ...)
    local hook = _G[name]
    if type(hook) ~= "function" then return true end
    local ok, err = xpcall(hook, traceback, ...)
    if ok then return true end
    return false, name .. ": " .. tostring(err)
end

--- Compile and run a file; returns true, or false and "file:line: message" (+ traceback).
function dispatch.run_file(path)
    local chunk, err = loadfile(path)
    if chunk == nil then return false, err end
    local ok, run_err = xpcall(chunk, traceback)
    if ok then return true end
    return false, run_err
end

function dispatch.new_promise()
    local resolve, promise = aio:prepare_promise()
    return promise, resolve
end

function dispatch.has_function(name)
    return type(_G[name]) == "function"
end

return dispatch
