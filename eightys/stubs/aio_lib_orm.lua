---@meta aio.lib.orm
-- 80s name of orm.
return require("orm")
