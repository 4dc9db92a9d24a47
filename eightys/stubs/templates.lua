---@meta eightys.templates
-- The template engine (require("aio.lib.templates")); the content server uses it.

---@class templatesmodule
local templates = {}

---@class compiledtemplate
local compiledtemplate = {}

---Render with a context table (see templatecontext); a promise of the text.
---@param ctx table
---@return any
function compiledtemplate:render(ctx) end

---Compile a template file (.dyn.*).
---@param path string
---@param opts? table
---@return compiledtemplate|nil
---@return string|nil err
function templates.compile(path, opts) end

---HTML-escape.
---@param s string
---@return string
function templates.escape(s) end

return templates
