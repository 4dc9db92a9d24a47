---@meta orm
-- Repositories over mysql (require("orm") or require("aio.lib.orm")).

---@class ormtype

---@class ormtypes
---@field int ormtype
---@field double ormtype
---@field text ormtype
---@field bit ormtype
---@field boolean ormtype
---@field datetime ormtype
---@field varchar fun(size: integer): ormtype

---@class ormmodule
---@field t ormtypes
---@field NULL any writes SQL NULL
local orm = {}

---@class ormfinder
---@field [string] fun(self, ...): aiopromise byX(args..., opts?)

---@class ormrepo
---@field all ormfinder
---@field one ormfinder
---@field count ormfinder
---@field deleteAll ormfinder
---@field deleteOne ormfinder
local ormrepo = {}

---A repository from a definition {source, entity, index, findBy..., ...}.
---@param sql mysqlclient
---@param def table
---@return ormrepo
function orm:create(sql, def) end

---Insert entities (one statement).
---@return aiopromise
function ormrepo:insert(...) end

---REPLACE entities.
---@return aiopromise
function ormrepo:replace(...) end

---Update by the index columns.
---@param obj table
---@param changes? table
---@return aiopromise
function ormrepo:update(obj, changes) end

---Insert or update by primary key.
---@param obj table
---@return aiopromise
function ormrepo:save(obj) end

---Delete by the index columns.
---@param obj table
---@return aiopromise
function ormrepo:delete(obj) end

---An entity from a row.
---@param row table
---@return table
function ormrepo:to_entity(row) end

return orm
