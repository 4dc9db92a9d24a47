---@meta aio.lib.nodes
-- 80s name of eightys.nodes.
return require("eightys.nodes")
