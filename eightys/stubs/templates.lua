---@meta eightys.templates
-- The template engine (require("eightys.templates"); require("aio.lib.templates") adds
-- 80s's templates:prepare / templates:render); the content server uses it.

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

---Compile template text (80s): base is the folder includes are relative to.
---@param content string
---@param base string
---@param file_name? string
---@return compiledtemplate|nil
---@return string|nil err
function templates:prepare(content, base, file_name) end

---Render a prepared template (80s): promise of {status, headers, content}.
---@param fd any
---@param session table
---@param headers table
---@param body string
---@param method string
---@param endpoint string
---@param query table
---@param mime string
---@param tpl compiledtemplate
---@return aiopromise
function templates:render(fd, session, headers, body, method, endpoint, query, mime, tpl) end

return templates
