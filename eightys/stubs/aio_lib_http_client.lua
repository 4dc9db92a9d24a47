---@meta aio.lib.http_client
-- 80s name of eightys.http_client.
return require("eightys.http_client")
