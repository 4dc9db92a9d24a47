-- aio.lib.templates: eightys' template engine (eightys.templates) plus 80s's
-- calls on it, templates:prepare(content, base, file_name) and
-- templates:render(fd, session, headers, body, method, endpoint, query, mime, ctx),
-- for apps that render templates themselves.

local type = type
local setmetatable = setmetatable

local engine = require("eightys.templates")

local templates = setmetatable({}, { __index = engine })

--- Compile template text (80s): `base` is the folder includes are relative to,
--- `file_name` names it in errors. Returns the compiled template, or nil, err.
--- @param content string
--- @param base string
--- @param file_name? string
--- @return eightys.template|nil
--- @return string|nil err
function templates:prepare(content, base, file_name)
    if type(content) ~= "string" or type(base) ~= "string" then
        error("templates:prepare(content, base[, file_name]) expects strings", 2)
    end
    base = base:gsub("/+$", "")
    local path = engine.normalize((base == "" and "." or base) .. "/" .. (file_name or "template"))
    local read = engine.read_file
    return engine.compile(path, {
        root = base ~= "" and base or nil,
        read = function(p)
            if p == path then return content end
            return read(p)
        end,
    })
end

--- Render a prepared template (80s): a promise of {status, headers, content};
--- a template error gives status "500 Internal Server Error" and the error text.
--- @return aiopromise
function templates:render(fd, session, headers, body, method, endpoint, query, mime, tpl)
    local output = { status = "200 OK", headers = { ["content-type"] = mime } }
    return aio:async(function()
        if tpl == nil then
            return { status = "500 Internal Server Error", headers = { ["content-type"] = "text/plain" },
                     content = "template did not compile" }
        end
        local page, err = tpl:render({
            fd = fd, session = session or {}, headers = headers or {}, body = body or "",
            method = method, endpoint = endpoint, query = query or {}, locals = {},
            status = function(s) output.status = s end,
            header = function(k, v) output.headers[k] = v end,
        })
        if not page then
            return { status = "500 Internal Server Error", headers = { ["content-type"] = "text/plain" },
                     content = err }
        end
        return { status = output.status, headers = output.headers, content = page }
    end)
end

return templates
