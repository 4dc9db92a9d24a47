---@meta eightys.dns
-- Non-blocking name lookups (require("aio.lib.dns")).

---@class dns
---@field ttl number seconds results are cached
local dns = {}

---Promise of {ip = ...} or {error = ...}.
---@param host_name string
---@param record_type? "A"|"AAAA"
---@return aiopromise
function dns:get_ip(host_name, record_type) end

---Pin a record.
---@param host_name string
---@param record_type string
---@param value string
function dns:add_record(host_name, record_type, value) end

return dns
