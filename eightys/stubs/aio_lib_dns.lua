---@meta aio.lib.dns
-- 80s name of eightys.dns.
return require("eightys.dns")
