---@meta aio.lib.mysql
-- 80s name of mysql.
return require("mysql")
