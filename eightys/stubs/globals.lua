---@meta
-- eightys Lua API: globals, hooks, net, codec, crypto.
-- Type stubs for lua-language-server (VS Code "Lua" extension, Neovim lspconfig
-- lua_ls): `eightys stubs DIR` writes these files; add DIR to
-- "Lua.workspace.library" in .luarc.json. They describe; they never run.

---This worker's index, 0 .. WORKERS-1.
---@type integer
WORKERID = 0
---Number of worker processes (`-c N`).
---@type integer
WORKERS = 1
---The TCP port the server listens on (0 for a Unix socket).
---@type integer
PORT = 8080
---Node name (`-n NAME`, or $HOSTNAME, or "localhost").
---@type string
NODE = "localhost"
---"NODE/PORT/WORKERID" (80s).
---@type string
NODE_ID = "localhost/8080/0"
---Path of the entry script.
---@type string
ENTRYPOINT = ""
---Development mode (`--dev` / `--reload`): error pages show the source.
---@type boolean
DEV = false
---Opaque handle of this worker's event loop (80s API; functions taking it ignore it).
---@type any
ELFD = 0
---Opaque handle of the listening socket (80s API).
---@type any
PARENTFD = 0
---The null handle (80s).
---@type any
NILFD = 0
---fd type: a socket.
S80_FD_SOCKET = 1
---fd type: a kernel-TLS socket (80s; never produced by eightys).
S80_FD_KTLS_SOCKET = 2
---fd type: a pipe (aio:popen).
S80_FD_PIPE = 3
---fd type: other (inotify in 80s).
S80_FD_OTHER = 4
---fd type: the listening socket.
S80_FD_SERVER_SOCKET = 5
---Mailbox type of user messages (on_message).
S80_MB_MESSAGE = 5
---Pass to net.reload / net.quit / net.mail to act on the whole server (80s).
---@type any
S80_RELOAD = {}

---@alias fd any an opaque connection handle

---Is `v` an error value `{error = "..."}`?
---@param v any
---@return boolean
function iserror(v) end

---True when none of the arguments is nil.
---@return boolean
function ispresent(...) end

---An error value `{error = message}`.
---@param message string
---@return {error: string}
function make_error(message) end

---Lua 5.1's unpack (also on Lua 5.4).
unpack = table.unpack

-- Hooks: define these globals in the entry script (a raw TCP app; without
-- on_data/on_accept the app is an HTTP app).

---Once per worker, after the entry script first ran.
---@param elfd any
---@param parentfd any
function on_init(elfd, parentfd) end

---A connection was accepted (defining it makes the app a raw TCP app).
---@param elfd any
---@param parentfd any
---@param childfd fd
---@param fdtype integer
function on_accept(elfd, parentfd, childfd, fdtype) end

---Bytes arrived on a connection the aio library does not own.
---@param elfd any
---@param childfd fd
---@param data string
---@param length integer
function on_data(elfd, childfd, data, length) end

---The connection can take more data, or an outgoing connection completed.
---@param elfd any
---@param childfd fd
function on_write(elfd, childfd) end

---The connection closed; `err` says why when it failed.
---@param elfd any
---@param childfd fd
---@param err? string
function on_close(elfd, childfd, err) end

---A message from a worker (net.mail / aio:mail), 80s argument order.
---@param sender_worker integer
---@param sender_elfd any
---@param sender_fd any
---@param elfd any
---@param receiver_fd any
---@param type integer S80_MB_MESSAGE
---@param message string|table
function on_message(sender_worker, sender_elfd, sender_fd, elfd, receiver_fd, type, message) end

---@class netlib
net = {}

---Queue bytes; the 80s form `net.write(elfd, fd, fdtype, data, offset)` works too.
---@param elfd any
---@param fd fd
---@param data string
---@param offset? integer
---@return boolean ok
---@return integer|string n_or_err
function net.write(elfd, fd, data, offset) end

---Close once queued data is sent; on_close follows.
---@param elfd any
---@param fd fd
---@return boolean
function net.close(elfd, fd) end

---Outgoing TCP connection (name lookup never blocks); on_write fires when connected.
---`host` may be "v6:addr" or "unix:/path".
---@param elfd any
---@param host string
---@param port integer
---@return fd|nil fd
---@return string|nil err
function net.connect(elfd, host, port) end

---Re-run the entry script in this worker (net.reload(S80_RELOAD): every worker).
---@return boolean ok
---@return string|nil err
function net.reload(ctx) end

---Stop the whole server gracefully (a `--cli` script: end it, exit status `ctx`
---when it is an integer 0-255, else 0).
---@param ctx? any S80_RELOAD (80s), or an exit status for --cli
function net.quit(ctx) end

---Deliver a string or plain table to worker `worker`'s on_message ("*": every worker).
---Also the 80s form net.mail(S80_RELOAD, sender_wid, sender_elfd, sender_fd, target_wid, target_fd, type, msg).
---@param worker integer|"*"|any
---@param message string|table
---@param receiver_fd? any
---@return boolean|nil ok
---@return string|nil err
function net.mail(worker, message, receiver_fd, ...) end

---Sorted names in `dir`; directories end in "/".
---@param dir string
---@return string[]|nil names
---@return string|nil err
function net.listdir(dir) end

---The whole file.
---@param path string
---@param mode? string ignored
---@return string|nil data
---@return string|nil err
function net.readfile(path, mode) end

---Monotonic seconds.
---@return number
function net.clock() end

---A one-line description of the build and worker.
---@return string
function net.info() end

---The peer's address of a connection (80s's name), nothing for a Unix socket.
---@param fd fd
---@return string ip
---@return integer port
function net.sockname(fd) end

---1-based position and length of the first `needle` at or after `offset`, or of
---the longest start of `needle` that ends `haystack`, or `#haystack + 1, 0`.
---@param haystack string
---@param needle string
---@param offset integer
---@return integer pos
---@return integer length
function net.partscan(haystack, needle, offset) end

---Create a directory; true if it exists afterwards.
---@param path string
---@param mode? integer
---@return boolean
function net.mkdir(path, mode) end

---Start a process without a shell: its stdout+stderr and stdin handles.
---@param elfd any
---@param cmd string
---@param ... string
---@return fd|nil read_fd
---@return fd|string|nil write_fd_or_err
function net.popen(elfd, cmd, ...) end

---@class codeclib
codec = {}

---JSON text, or nil, err (cycles, NaN, functions).
---@param value any
---@return string|nil json
---@return string|nil err
function codec.json_encode(value) end

---A value from JSON text, or nil, err with the byte position.
---@param text string
---@return any value
---@return string|nil err
function codec.json_decode(text) end

---JSON null.
codec.null = {}

---Mark a table as a JSON array (a new empty one without an argument).
---@param t? table
---@return table
function codec.array(t) end

---Mark a table as a JSON object.
---@param t? table
---@return table
function codec.object(t) end

---RFC 3986 percent-encoding.
---@param s string
---@return string
function codec.url_encode(s) end

---Percent-decoding; "+" becomes a space.
---@param s string
---@return string
function codec.url_decode(s) end

---`& < > " '` to entities.
---@param s string
---@return string
function codec.html_encode(s) end

---Same as codec.html_encode.
---@param s string
---@return string
function codec.html_escape(s) end

---Lower-case hex.
---@param s string
---@return string
function codec.hex_encode(s) end

---Bytes from hex, or nil, err.
---@param s string
---@return string|nil
---@return string|nil err
function codec.hex_decode(s) end

---Standard base64.
---@param s string
---@return string
function codec.base64_encode(s) end

---Bytes from base64 (standard or URL-safe, padding optional), or nil, err.
---@param s string
---@return string|nil
---@return string|nil err
function codec.base64_decode(s) end

---The table as a Lua literal: load("return " .. s)() reads it back.
---@param t table
---@return string
function codec.lua_encode(t) end

---80s's escaping for a quoted MySQL literal.
---@param s string
---@return string
function codec.mysql_encode(s) end

---@class cryptolib
crypto = {}

---Raw SHA-1 digest.
---@param s string
---@return string
function crypto.sha1(s) end

---Raw SHA-256 digest.
---@param s string
---@return string
function crypto.sha256(s) end

---Raw HMAC-SHA256.
---@param data string
---@param key string
---@return string
function crypto.hmac_sha256(data, key) end

---`n` random bytes (0..65536).
---@param n integer
---@return string
function crypto.random(n) end

---Authenticated encryption (AES-256-GCM; AES-SIV when deterministic). key: 16+ bytes.
---@param data string
---@param key string
---@param deterministic? boolean
---@return string token
function crypto.encrypt(data, key, deterministic) end

---The plaintext of a crypto.encrypt token, or nil, "decryption failed".
---@param token string
---@param key string
---@return string|nil
---@return string|nil err
function crypto.decrypt(token, key) end

---Base64 (80s name).
---@param s string
---@return string
function crypto.to64(s) end

---From base64 (80s name).
---@param s string
---@return string|nil
function crypto.from64(s) end

---80s's AES-128-CBC + HMAC-SHA256 format, byte for byte.
---@param data string
---@param key string 16+ bytes
---@param use_iv boolean random IV (else zero IV)
---@param encrypt boolean true: encrypt, false: decrypt
---@return string|nil result
---@return string|nil err
function crypto.cipher(data, key, use_iv, encrypt) end
