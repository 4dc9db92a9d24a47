---@meta aio.lib.httpd
-- 80s name of eightys.httpd.
return require("eightys.httpd")
