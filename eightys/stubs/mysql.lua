---@meta mysql
-- MySQL/MariaDB client (require("mysql") or require("aio.lib.mysql")).

---@class mysqlmodule
---@field NULL any SQL NULL in rows and arguments (codec.null)
local mysql = {}

---@alias mysqlresult {affected_rows: integer, last_insert_id: integer, warnings: integer}

---@class mysqlclient
local mysqlclient = {}

---A client with a connection pool.
---@param opts? {pool_size?: integer, connect_timeout?: number}
---@return mysqlclient
function mysql:new(opts) end

---Escape a value for a query (no quotes added).
---@param v any
---@return string
function mysql.escape(v) end

---Promise of true, or nil, err.
---@param user string
---@param password string
---@param db string
---@param host? string
---@param port? integer
---@return aiopromise
function mysqlclient:connect(user, password, db, host, port) end

---Promise of {affected_rows, last_insert_id, warnings} or nil, err; string.format with escaped arguments.
---@param query string
---@return aiopromise
function mysqlclient:exec(query, ...) end

---Promise of an array of rows or nil, err.
---@param query string
---@return aiopromise
function mysqlclient:select(query, ...) end

---exec with ? placeholders bound by the driver.
---@param sql string
---@param args any[]
---@return aiopromise
function mysqlclient:exec_args(sql, args) end

---select with ? placeholders bound by the driver.
---@param sql string
---@param args any[]
---@return aiopromise
function mysqlclient:select_args(sql, args) end

---Escape a value for a query (no quotes added).
---@param v any
---@return string
function mysqlclient:escape(v) end

---Run fn(tx) in a transaction; commits when fn returns a true value.
---@param fn fun(tx: mysqlclient): any
---@return aiopromise
function mysqlclient:transaction(fn) end

---Close the pool.
function mysqlclient:close() end

return mysql
