---@meta aio.lib.templates
-- 80s name of eightys.templates.
return require("eightys.templates")
