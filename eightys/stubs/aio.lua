---@meta aio.aio
-- The aio library (a global; `require("aio.aio")` returns it too).

---A promise: call it with a callback to subscribe; resolves once.
---@class aiopromise
---@overload fun(callback: fun(...: any)|thread): aiopromise
local aiopromise = {}

---Same as calling the promise.
---@param callback fun(...: any)|thread
---@return aiopromise
function aiopromise:next(callback) end

---Whether the promise has its values.
---@return boolean
function aiopromise:is_resolved() end

---A timer from aio:set_timeout / aio:set_interval.
---@class aiotimer
local aiotimer = {}

---Stop the timer; true if it was pending.
---@return boolean
function aiotimer:cancel() end

---A socket the aio library owns: override the on_* methods or use aio:cor / aio:buffered_cor.
---@class aiosocket
---@field fd fd
---@field elfd any
---@field closed boolean
---@field name table|nil set by nodes:register
aiosocket = {}

---Wrap a connection handle.
---@param elfd any
---@param fd fd
---@param connected? boolean
---@return aiosocket
function aiosocket:new(elfd, fd, connected) end

---Queue data; with close = true, close once it is sent.
---@param data string
---@param close? boolean
---@return boolean ok
---@return string|nil err
function aiosocket:write(data, close) end

---Close after pending data is sent.
---@return boolean
function aiosocket:close() end

---The name nodes:register gave this socket.
---@return table|nil
function aiosocket:get_name() end

---Write a complete HTTP/1.1 response on a raw (stream) socket.
---@param status string|integer
---@param headers table|string|nil header table or Content-Type
---@param body string|table|nil a table is sent as JSON
---@return boolean
function aiosocket:http_response(status, headers, body) end

---Each received chunk.
---@param elfd any
---@param fd fd
---@param data string
---@param length integer
function aiosocket:on_data(elfd, fd, data, length) end

---The connection closed; err says why when it failed.
---@param elfd any
---@param fd fd
---@param err? string
function aiosocket:on_close(elfd, fd, err) end

---An outgoing connection is up.
---@param elfd any
---@param fd fd
function aiosocket:on_connect(elfd, fd) end

---The socket can take more data.
---@param elfd any
---@param fd fd
function aiosocket:on_write(elfd, fd) end

---The request object HTTP handlers get as `fd`.
---@class httprequest
---@field fd fd the connection handle
---@field method string
---@field path string
---@field scheme "https"|"http" "https" on a TLS listener
---@field flags integer connection flags (1 keep-alive, 2 HTTP/1.0, 4 TLS)
---@field headers table<string, string> lower-case names
---@field params table<string, string> path parameters (/users/:id)
---@field flags integer connection flag bits (eightys/wire.py)
---@field body string|nil the body in memory ("" if none); nil when it is in a file (larger than --body-buffer-size)
---@field body_file string|nil path of the temporary file holding a body larger than --body-buffer-size (removed once the response is sent)
local httprequest = {}

---The request body in pieces of at most 64 KiB (fn may aio:await), whether it is
---in memory or in a file; without fn, the whole body as one string.
---@param fn? fun(piece: string)
---@return string|boolean|nil result true (with fn), the body (without), or nil on error
---@return string|nil err
function httprequest:read_body(fn) end

---The client's address the ACLs check: the peer, or behind --proxy-from the
---rightmost X-Forwarded-For hop that is not a trusted proxy; nil for a Unix socket.
---@return string|nil
function httprequest:client_ip() end

---Send a complete response.
---@param status integer|string 200, or 80s style "200 OK"
---@param headers? table|string header table, or just the Content-Type
---@param body? string|table a table is sent as JSON
---@return boolean
function httprequest:http_response(status, headers, body) end

---Start a streaming (chunked) response.
---@param status integer|string
---@param headers? table|string
---@return httpstream
function httprequest:http_stream(status, headers) end

---Close the connection after this response.
function httprequest:close() end

---A streaming response.
---@class httpstream
local httpstream = {}

---Send one chunk; false, "closed" if the client left.
---@param data string
---@return boolean ok
---@return string|nil err
function httpstream:write(data) end

---Finish the response.
---@return boolean
function httpstream:close() end

---Same as close.
function httpstream:finish() end

---A promise resolved once the client took what was sent.
---@return aiopromise
function httpstream:drain() end

---@alias aiohttphandler fun(fd: httprequest, query: string, headers: table<string, string>, body: string|nil)
---Route options: a network ACL (CIDR strings, IPv4/IPv6). Deny wins; with allow,
---only those pass (an empty list: nobody). A refused client gets 403.
---@alias aiorouteoptions {allow?: string|string[], deny?: string|string[]}
---@alias aiostreamhandler fun(sock: aiosocket, query: string, headers: table<string, string>, body: string): thread|nil

---@class aio
---@field fds table<any, aiosocket>
---@field max_buffer integer
---@field max_cache_size integer
---@field master_key string|nil
---@field http_error_page nil|fun(status: integer, err: any, fd: httprequest): string, string
aio = {}

---@return fun(...: any) resolve
---@return aiopromise promise
function aio:prepare_promise() end

---An already resolved promise.
---@return aiopromise
function aio:resolved(...) end

---Is v an aio promise?
---@return boolean
function aio:is_promise(v) end

---Promise of each promise's first value, in argument order.
---@return aiopromise
function aio:gather(...) end

---Run steps one after another; resolves with the last step's values.
---@param first any
---@return aiopromise
function aio:chain(first, ...) end

---Array map (80s).
---@param array table
---@param fn fun(item: any, ...): any
---@return table
function aio:map(array, fn, ...) end

---Resume a coroutine the aio way (errors logged).
---@param co thread
function aio:resume(co, ...) end

---coroutine.create (80s).
---@param fn function
---@return thread
function aio:cor0(fn) end

---Run fn in a coroutine so it may aio:await; promise of its results (nil, err if it raised).
---@param fn fun(...): ...
---@param on_error? fun(err: any)
---@return aiopromise
function aio:async(fn, on_error, ...) end

---Inside aio:async: wait for a promise and return its values.
---@param promise aiopromise|function|thread|any
---@return any ...
function aio:await(promise) end

---Events of target[event_name] as a stream read by fn(stream, resolve).
---@return aiopromise
function aio:cor2(target, event_name, close_name, fn) end

---aio:cor2 without a close event.
---@return aiopromise
function aio:cor1(target, event_name, fn) end

---`for chunk in stream do ... end` over a socket's data until it closes.
---@param target aiosocket
---@param fn fun(stream: fun(): string|nil, resolve: fun(...))
---@return aiopromise
function aio:cor(target, fn) end

---Framed reads: coroutine.yield(n) or coroutine.yield("delim"[, cap]) inside fn.
---@param target aiosocket
---@param fn fun(resolve: fun(...))
---@return aiopromise
function aio:buffered_cor(target, fn) end

---Internal: a pool of coroutines running `body`.
---@param body fun(...)
---@param max? integer
---@return fun(...)
function aio:coroutine_pool(body, max) end

---Run fn(...) in a pooled coroutine (it may aio:await).
---@param fn function
function aio:run(fn, ...) end

---Memoise producer()'s result (a promise too) under (cache_name, key).
---@generic T
---@param cache_name string
---@param key any
---@param producer fun(): T
---@param ttl? number|boolean seconds; false bypasses
---@param expire? number
---@return T
function aio:cached(cache_name, key, producer, ttl, expire) end

---Largest number of entries per aio:cached cache.
---@param n integer
function aio:set_max_cache_size(n) end

---Call fn() once after `seconds`.
---@param fn fun()
---@param seconds number
---@return aiotimer
function aio:set_timeout(fn, seconds) end

---Call fn() every `seconds`.
---@param fn fun()
---@param seconds number
---@return aiotimer
function aio:set_interval(fn, seconds) end

---Cancel a timer (nil is ignored).
---@param timer aiotimer|nil
---@return boolean
function aio:clear_timeout(timer) end

---Same as aio:clear_timeout.
---@param timer aiotimer|nil
---@return boolean
function aio:clear_interval(timer) end

---A promise resolved with true after `seconds`.
---@param seconds number
---@return aiopromise
function aio:sleep(seconds) end

---Options of an outgoing TLS connection: the certificate is checked against the
---system CAs (or ca_file) and the host name (or server_name, also the SNI);
---verify = false turns the checks off.
---@alias tlsoptions {tls: boolean, ca_file?: string, server_name?: string, verify?: boolean}

---Outgoing TCP connection as an aiosocket; TLS with `opts.tls` (a failed
---handshake closes it: on_close gets the reason).
---@param elfd any
---@param host string
---@param port integer
---@param opts? tlsoptions
---@return aiosocket|nil
---@return string|nil err
function aio:connect(elfd, host, port, opts) end

---Promise of a connected aiosocket, or {error = ...} (80s); `tls = true` or
---`ssl = aio:get_ssl_context{...}` for TLS.
---@param params {host: string, port: integer, elfd?: any, tls?: boolean|table, ssl?: table, server_name?: string}
---@return aiopromise
function aio:connect2(params) end

---A client TLS context for aio:connect2{ssl = ctx} (80s); cached per parameters.
---@param params? {ca_file?: string, verify?: boolean}
---@return table|nil ctx
---@return string|nil err
function aio:get_ssl_context(params) end

---Take over an accepted raw connection.
---@param fd fd
---@return aiosocket
function aio:wrap(fd) end

---Send a string or plain table to a worker's on_message.
---@param params {worker?: integer|"*", message: string|table, fd?: any, target?: any}
---@return boolean|nil
---@return string|nil err
function aio:mail(params) end

---Send a message to every worker.
---@param message string|table
function aio:broadcast(message) end

--- Receive what aio:post sends to mailbox `name`: `handler(sender_worker, data)` runs in
--- the receiving worker (registering the name again replaces the handler).
---@param name string
---@param handler fun(sender: integer, data: string)
function aio:mailbox(name, handler) end

--- Send string `data` to mailbox `name` of worker `worker` ("*": every worker, this one
--- included), relayed by the master. Returns true, or nil, err.
---@param worker integer|string
---@param name string
---@param data string
---@return boolean|nil ok
---@return string? err
function aio:post(worker, name, data) end

---Every worker reloads its Lua code.
---@param full? boolean ignored (80s)
---@return boolean
function aio:reload(full) end

---Stop the server gracefully. In a script (`eightys --cli`), end it with exit
---status `code` once the current callback returns.
---@param code? integer 0-255, default 0 (used by --cli only)
---@return boolean
function aio:quit(code) end

---Register handler for method and path ("/users/:id" parameters allowed).
---@param method string
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_any(method, path, handler, options) end

---GET handler (also answers HEAD).
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_get(path, handler, options) end

---POST handler.
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_post(path, handler, options) end

---PUT handler.
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_put(path, handler, options) end

---DELETE handler.
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_delete(path, handler, options) end

---PATCH handler.
---@param path string
---@param handler aiohttphandler
---@param options? aiorouteoptions
function aio:http_patch(path, handler, options) end

---Drop every route.
function aio:http_clear() end

---Remove one route; true if there was one.
---@param method string
---@param path string
---@return boolean
function aio:http_remove(method, path) end

---The default dispatcher (route lookup, HEAD, 405, 404).
function aio:route(fd, method, path, query, headers, body) end

---The dispatcher of every request; override it to take over routing.
---@param fd httprequest
---@param method string
---@param path string
---@param query string
---@param headers table<string, string>
---@param body string
function aio:on_http(fd, method, path, query, headers, body) end

---Parse a query string; with private_key, `e` is decrypted into the result.
---@param qs string|nil
---@param private_key? string
---@return table<string, string|table>
function aio:parse_query(qs, private_key) end

---A stream route: after the head the connection is a raw stream read with coroutine.yield.
---@param method string
---@param path string
---@param handler aiostreamhandler
function aio:stream_http_any(method, path, handler) end

---Stream route for GET.
---@param path string
---@param handler aiostreamhandler
function aio:stream_http_get(path, handler) end

---Stream route for POST.
---@param path string
---@param handler aiostreamhandler
function aio:stream_http_post(path, handler) end

---A process without a shell: its output and input as aiosockets.
---@param elfd any
---@param cmd string
---@return aiosocket|nil read_sock
---@return aiosocket|string|nil write_sock_or_err
function aio:popen(elfd, cmd, ...) end

---Promise of a process's whole output (nil if it cannot start).
---@param elfd any
---@param cmd string
---@return aiopromise
function aio:popen_read(elfd, cmd, ...) end

---Promise of everything sock receives until it closes.
---@param sock aiosocket
---@return aiopromise
function aio:read_stream(sock) end

---Watch files or folders (recursively); on_change gets each batch of changes.
---@param elfd any
---@param targets string[]
---@param on_change fun(events: {name: string, create: boolean, modify: boolean, delete: boolean, dir: boolean, clock: number}[])
---@return {close: fun(self): boolean}|nil handle
---@return string|nil err
function aio:watch(elfd, targets, on_change) end

---net.readfile (80s).
---@param path string
---@param mode? string
---@return string|nil
function aio:read_file_sync(path, mode) end

---Call handler(sock) whenever an aiosocket closes.
---@param name string
---@param handler fun(sock: aiosocket)
function aio:register_close_handler(name, handler) end

---Run every close handler for sock.
---@param sock aiosocket
function aio:invoke_close(sock) end

---The client's address (X-Real-IP wins).
---@param sock httprequest|aiosocket|fd
---@param headers? table
---@return string ip
---@return integer port
function aio:get_ip(sock, headers) end

---Split an HTTP head: method, url, headers (response: protocol, status, headers).
---@param data string
---@param response? boolean
---@return string method
---@return string url
---@return table<string, string> headers
function aio:parse_http(data, response) end

---This worker's largest request head (nil: the configured limit).
---@param size integer|nil
function aio:set_max_http_header(size) end

---This worker's largest request body (nil: the configured limit).
---@param size integer|nil
function aio:set_max_http_body(size) end

---Master key for encrypted URLs (16+ bytes, "b64:" prefix for base64, nil/"" off).
---@param key string|nil
function aio:set_master_key(key) end

---master_key .. private_key (or private_key without a master key).
---@param private_key string
---@return string
function aio:create_key(private_key) end

---crypto.cipher + base64 (80s); nil on failure.
---@param data string
---@param key string
---@param iv? boolean default true
---@param raw? boolean no base64
---@return string|nil
function aio:encrypt(data, key, iv, raw) end

---Inverse of aio:encrypt; nil if not a valid token.
---@param data string
---@param key string
---@param raw? boolean
---@return string|nil
function aio:decrypt(data, key, raw) end

---A query string; with private_key the parameters are encrypted in `e`.
---@param params table
---@param private_key? string
---@param ordered? boolean
---@return string
function aio:create_query(params, private_key, ordered) end

---A URL for endpoint with params (encrypted with a master key; params.e = false: clear).
---@param endpoint string
---@param params? table
---@param hash? string
---@return string
function aio:to_url(endpoint, params, hash) end

---Set the DNS provider (kept for 80s apps; eightys resolves through the loop).
---@param provider? table
function aio:set_dns(provider) end

return aio
