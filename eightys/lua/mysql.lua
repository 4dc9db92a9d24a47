-- MySQL / MariaDB client for eightys apps: `local mysql = require("mysql")`
-- (80s name: `require("aio.lib.mysql")`; loading it also sets the global `mysql`).
--
-- The protocol work happens in Python (eightys/mysql.py, on aiomysql): every
-- query method returns an aio promise at once. Failures at run time (server
-- down, bad SQL, lost connection) are values, `nil, "mysql: (code) message"`;
-- misuse (a query that is not a string, an argument that cannot be bound, a
-- `?` count that does not match) raises with error().
--
--     local db = mysql:new({ pool_size = 8 })
--     local ok, err = aio:await(db:connect("app", "secret", "appdb"))
--     local rows, err = aio:await(db:select("SELECT id, name FROM users WHERE name = '%s'", name))
--     local rows, err = aio:await(db:select_args("SELECT id FROM users WHERE id = ?", { 42 }))
--     local res, err = aio:await(db:exec_args("INSERT INTO users (name) VALUES (?)", { name }))
--     -- res.affected_rows, res.last_insert_id, res.warnings
--
-- Pool: each client has, in each worker, up to `pool_size` connections (default:
-- the DB_POOL_SIZE environment variable, else 4), opened when needed. Up to
-- that many queries run at once; more wait for a connection. A lost connection
-- (KILL, server restart, wait_timeout) is replaced by a new one: a select that
-- fails because its connection was lost is retried once on a fresh connection;
-- an exec that fails that way returns `nil, err` (it may or may not have run).
-- A query while the server is down fails at once (or after connect_timeout if
-- the server does not answer) with `nil, err`.
--
-- Connections: utf8mb4, autocommit, one statement per query (multi-statements
-- are off), and a session sql_mode without NO_BACKSLASH_ESCAPES, so escape()'s
-- backslash escaping is always valid (do not turn that mode on yourself).
-- Session state set with exec ("SET @x", "USE db") stays on whichever pooled
-- connection ran it: use transaction() when statements must share a connection.
--
-- Result values (select rows are tables keyed by column name; when two columns
-- have the same name, the last one wins):
--   TINYINT..BIGINT, YEAR   integer (LuaJIT: a number; beyond +-2^53 a decimal
--                           string, exact. Lua 5.4: a 64-bit integer; an
--                           unsigned value beyond 2^63-1 is a decimal string)
--   FLOAT, DOUBLE           number
--   DECIMAL (and SUM(), AVG() results, which MySQL types as DECIMAL)
--                           string, exact ("12.500000")
--   NULL                    mysql.NULL (== codec.null; JSON-encodes as null)
--   DATETIME, TIMESTAMP     "YYYY-MM-DDTHH:MM:SS", plus ".ffffff" when the
--                           microseconds are not zero (TIMESTAMP in the
--                           session time zone)
--   DATE                    "YYYY-MM-DD"
--   TIME                    "HH:MM:SS" (may be negative or beyond 24 h, as
--                           MySQL sends it; ".ffffff" as for DATETIME)
--   BIT                     integer (same limits as BIGINT)
--   CHAR, VARCHAR, TEXT, ENUM, SET, JSON   string (UTF-8 bytes as stored)
--   BINARY, VARBINARY, BLOB, GEOMETRY      string (the bytes, exact)
-- select() resolves with an array of rows marked codec.array (an empty result
-- JSON-encodes as []); exec() with { ok = true, affected_rows, last_insert_id,
-- warnings[, info] } (affected_rows counts changed rows).
--
-- Parameters:
--   * exec/select(query, ...): with arguments, the query is
--     string.format(query, escape(a1), escape(a2), ...); quoting is the caller's
--     job: "WHERE name = '%s'", "LIMIT %d"; a nil argument raises (mysql.NULL is
--     SQL NULL). Without arguments the query is sent
--     as it is (no string.format, so "%" needs no doubling).
--   * exec_args/select_args(sql, args): each `?` is bound by the driver (PyMySQL's
--     escaping, in Python) to the next value of the array `args`: strings
--     (text literals when valid UTF-8, binary literals otherwise), numbers,
--     booleans (1/0) and mysql.NULL. A `?` inside a quoted string, a quoted
--     identifier or a comment is not a placeholder. `args.n` may give the count
--     when the array has nil holes (a nil binds as NULL).
--
-- Transactions: client:transaction(fn) runs fn(tx) with aio:async on one
-- dedicated pooled connection; tx has exec, select, exec_args, select_args and
-- escape. See Client:transaction. Do not use the client itself for the same
-- rows inside fn, and keep pool_size above the number of concurrent
-- transactions that also query through the client, or they wait for each other.

local host = require("eightys.host")

local type = type
local error = error
local select = select
local tostring = tostring
local tonumber = tonumber
local rawequal = rawequal
local setmetatable = setmetatable
local next = next
local pcall = pcall
local format = string.format
local gsub = string.gsub
local concat = table.concat
local floor = math.floor
local huge = math.huge
local math_type = math.type -- nil on LuaJIT
local unpack = unpack or table.unpack

local mysql_new = host.mysql_new
local mysql_connect = host.mysql_connect
local mysql_query = host.mysql_query
local mysql_begin = host.mysql_begin
local mysql_finish = host.mysql_finish
local mysql_close = host.mysql_close

---@class mysql
local mysql = {}
mysql._VERSION = "1.0"

--- The SQL NULL sentinel: how NULL appears in rows, and how to pass NULL.
mysql.NULL = codec.null
local NULL = mysql.NULL

host.mysql_setup(NULL, getmetatable(codec.array()))

---------------------------------------------------------------------------
-- Escaping
---------------------------------------------------------------------------

local ESCAPES = {
    ["\0"] = "\\0", ["\n"] = "\\n", ["\r"] = "\\r", ["\\"] = "\\\\",
    ["'"] = "\\'", ['"'] = '\\"', ["\26"] = "\\Z",
}
-- LuaJIT (Lua 5.1 patterns) needs %z for the NUL byte; Lua 5.4 takes it as is.
local SPECIAL = _VERSION == "Lua 5.1" and "[%z\n\r\\'\"\26]" or "[\0\n\r\\'\"\26]"

local function escape_string(s)
    return (gsub(s, SPECIAL, ESCAPES))
end

local function escape_number(v, level)
    if math_type and math_type(v) == "integer" then
        return tostring(v)
    end
    if v ~= v or v == huge or v == -huge then
        error("mysql: cannot use " .. tostring(v) .. " in a query", level + 1)
    end
    if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then
        return format("%d", v)
    end
    local s = format("%.14g", v)
    if tonumber(s) ~= v then s = format("%.17g", v) end
    return s
end

local function escape(v, level)
    local t = type(v)
    if t == "string" then
        return escape_string(v)
    elseif t == "number" then
        local s = escape_number(v, level + 1) -- not a tail call: levels count this frame
        return s
    elseif t == "boolean" then
        return v and "1" or "0"
    elseif v == nil or rawequal(v, NULL) then
        return "NULL"
    elseif t == "table" then
        local n = #v
        if n == 0 then
            if next(v) ~= nil then
                error("mysql: cannot escape a table that is not an array", level + 1)
            end
            return "(NULL)"
        end
        local parts = {}
        for i = 1, n do
            local item = v[i]
            local it = type(item)
            if it == "string" then
                parts[i] = "'" .. escape_string(item) .. "'"
            elseif it == "number" then
                parts[i] = escape_number(item, level + 1)
            elseif it == "boolean" then
                parts[i] = item and "1" or "0"
            elseif item == nil or rawequal(item, NULL) then
                parts[i] = "NULL"
            else
                error("mysql: cannot escape a " .. it .. " inside an array", level + 1)
            end
        end
        return "(" .. concat(parts, ",") .. ")"
    end
    error("mysql: cannot escape a " .. t, level + 1)
end

--- The query text: `query` itself, or string.format(query, escape(...)).
local function build(query, level, ...)
    if type(query) ~= "string" then
        error("mysql: the query must be a string, got " .. type(query), level + 1)
    end
    local n = select("#", ...)
    if n == 0 then return query end
    local args = { ... }
    for i = 1, n do
        local v = args[i]
        if v == nil then
            -- most often a variable that was never set: quoting it as 'NULL' would
            -- query the string "NULL" and hide the mistake
            error("mysql: query argument #" .. i .. " is nil (pass mysql.NULL for SQL NULL)",
                  level + 1)
        end
        args[i] = escape(v, level + 1)
    end
    local ok, text = pcall(format, query, unpack(args, 1, n))
    if not ok then
        error("mysql: cannot format the query: " .. tostring(text), level + 1)
    end
    return text
end

--- A copy of `args` for Python: NULL as nil, booleans as 1/0; returns it and its count.
local function bind_args(sql, args, level)
    if type(sql) ~= "string" then
        error("mysql: the query must be a string, got " .. type(sql), level + 1)
    end
    if args == nil then return {}, 0 end
    if type(args) ~= "table" or rawequal(args, NULL) then
        error("mysql: args must be an array, got " .. type(args), level + 1)
    end
    local n = args.n or #args
    local out = {}
    for i = 1, n do
        local v = args[i]
        local t = type(v)
        if t == "string" then
            out[i] = v
        elseif t == "number" then
            if v ~= v or v == huge or v == -huge then
                error("mysql: argument #" .. i .. " is " .. tostring(v) .. ", which SQL cannot hold",
                    level + 1)
            end
            out[i] = v
        elseif t == "boolean" then
            out[i] = v and 1 or 0
        elseif not (v == nil or rawequal(v, NULL)) then
            error("mysql: argument #" .. i .. " is a " .. t
                .. " (strings, numbers, booleans and mysql.NULL can be bound)", level + 1)
        end
    end
    return out, n
end

--- Call a host function that returns a promise, or nil and a misuse message.
--- (Methods call it as `local promise = run(...) return promise`, not as a tail
--- call, so that error levels point at the method's caller.)
local function run(level, id, tx, want_rows, sql, args, n)
    local promise, err = mysql_query(id, tx, want_rows, sql, args, n)
    if promise == nil then error(err, level + 1) end
    return promise
end

---------------------------------------------------------------------------
-- Clients
---------------------------------------------------------------------------

---@class mysqlclient
local Client = {}
Client.__index = Client

---@class mysqltx
local Tx = {}
Tx.__index = Tx

--- Create a client. Nothing connects until client:connect.
---@param opts? {pool_size?: integer, connect_timeout?: number}
---   pool_size: connections per worker (default env DB_POOL_SIZE, else 4);
---   connect_timeout: seconds a new connection may take (default 3)
---@return mysqlclient
function mysql:new(opts)
    if self ~= mysql and opts == nil then opts = self end -- mysql.new(opts)
    if opts ~= nil and type(opts) ~= "table" then
        error("mysql:new: opts must be a table, got " .. type(opts), 2)
    end
    opts = opts or {}
    local pool_size, timeout = opts.pool_size, opts.connect_timeout
    if pool_size ~= nil and (type(pool_size) ~= "number" or pool_size < 1 or pool_size ~= floor(pool_size)) then
        error("mysql:new: pool_size must be a positive integer", 2)
    end
    if timeout ~= nil and (type(timeout) ~= "number" or not (timeout > 0)) then
        error("mysql:new: connect_timeout must be a positive number of seconds", 2)
    end
    return setmetatable({ id = mysql_new(pool_size, timeout) }, Client)
end

--- Set the server and credentials and open a first connection (this worker's
--- pool; connecting again replaces it). Queries may be issued before the promise
--- resolves. host may be "unix:/path/to/socket".
---@param user string
---@param password? string
---@param db? string database to use
---@param host_name? string default "127.0.0.1"
---@param port? integer default 3306
---@return aiopromise promise of `true`, or `nil, err` ("mysql: (1045) Access denied ...")
function Client:connect(user, password, db, host_name, port)
    if type(user) ~= "string" then
        error("mysql:connect: user must be a string, got " .. type(user), 2)
    end
    if password ~= nil and type(password) ~= "string" then
        error("mysql:connect: password must be a string", 2)
    end
    if db ~= nil and type(db) ~= "string" then
        error("mysql:connect: db must be a string", 2)
    end
    host_name = host_name or "127.0.0.1"
    if type(host_name) ~= "string" then
        error("mysql:connect: host must be a string", 2)
    end
    port = port or 3306
    if type(port) ~= "number" or port < 1 or port > 65535 or port ~= floor(port) then
        error("mysql:connect: port must be an integer in 1..65535", 2)
    end
    return mysql_connect(self.id, user, password, db, host_name, port)
end

--- Run a statement that returns no rows (INSERT, UPDATE, DELETE, DDL...).
--- With arguments, query is string.format(query, escape(...)) (the caller quotes).
---@param query string
---@return aiopromise promise of {ok=true, affected_rows=, last_insert_id=, warnings=[, info=]}, or nil, err
function Client:exec(query, ...)
    local promise = run(2, self.id, 0, false, build(query, 2, ...))
    return promise
end

--- Run a query that returns rows. With arguments, as for exec.
---@param query string
---@return aiopromise promise of an array (codec.array) of rows keyed by column name, or nil, err
function Client:select(query, ...)
    local promise = run(2, self.id, 0, true, build(query, 2, ...))
    return promise
end

--- exec with `?` placeholders bound by the driver to the values of `args`.
---@param sql string
---@param args? any[] strings, numbers, booleans, mysql.NULL
---@return aiopromise promise as for exec
function Client:exec_args(sql, args)
    local promise = run(2, self.id, 0, false, sql, bind_args(sql, args, 2))
    return promise
end

--- select with `?` placeholders bound by the driver to the values of `args`.
---@param sql string
---@param args? any[] strings, numbers, booleans, mysql.NULL
---@return aiopromise promise as for select
function Client:select_args(sql, args)
    local promise = run(2, self.id, 0, true, sql, bind_args(sql, args, 2))
    return promise
end

--- Escape a value for a query, without quotes: strings backslash-escaped
--- (\0 \n \r \\ \' \" \Z), numbers as digits, booleans 1/0, mysql.NULL (or nil)
--- as NULL, an array as ('a','b',3) (an empty one as (NULL)).
---@param v any
---@return string
function Client:escape(v)
    local s = escape(v, 2)
    return s
end

--- Run fn(tx) with aio:async on one dedicated connection, inside a transaction.
--- tx has exec, select, exec_args, select_args (promises, as on the client) and
--- escape. If fn returns a truthy first value, the transaction is committed and
--- the promise resolves with fn's return values. If fn raises (the error is
--- logged, as aio:async does), or returns nil/false (e.g. a failed statement's
--- `nil, err`), it is rolled back and the promise resolves `nil, err` (fn's
--- error or second value). A failed COMMIT resolves `nil, err` too. The
--- connection always goes back to the pool.
---@param fn fun(tx: mysqltx): any, any
---@return aiopromise
function Client:transaction(fn)
    if type(fn) ~= "function" then
        error("mysql:transaction: fn must be a function, got " .. type(fn), 2)
    end
    local id = self.id
    local resolve, promise = aio:prepare_promise()
    mysql_begin(id)(function(tx_id, err)
        if not tx_id then return resolve(nil, err) end
        local tx = setmetatable({ id = id, tx = tx_id }, Tx)
        aio:async(fn, nil, tx)(function(...)
            local first = ...
            local values = { n = select("#", ...), ... }
            local commit = first ~= nil and first ~= false
            mysql_finish(tx_id, commit)(function(done, finish_err)
                if commit then
                    if done then return resolve(unpack(values, 1, values.n)) end
                    return resolve(nil, finish_err)
                end
                local reason = values[2]
                if reason == nil then
                    reason = "mysql: transaction rolled back: the function returned " .. tostring(first)
                end
                resolve(nil, reason)
            end)
        end)
    end)
    return promise
end

--- Close this client's pool in this worker; queries after it fail with nil, err.
---@return aiopromise promise of true
function Client:close()
    return mysql_close(self.id)
end

function Tx:exec(query, ...)
    local promise = run(2, self.id, self.tx, false, build(query, 2, ...))
    return promise
end

function Tx:select(query, ...)
    local promise = run(2, self.id, self.tx, true, build(query, 2, ...))
    return promise
end

function Tx:exec_args(sql, args)
    local promise = run(2, self.id, self.tx, false, sql, bind_args(sql, args, 2))
    return promise
end

function Tx:select_args(sql, args)
    local promise = run(2, self.id, self.tx, true, sql, bind_args(sql, args, 2))
    return promise
end

Tx.escape = Client.escape

--- mysql:escape(v) / mysql.escape_string(s) work without a client too.
mysql.escape = Client.escape
mysql.escape_string = escape_string
mysql.Client = Client

_G.mysql = mysql
return mysql
