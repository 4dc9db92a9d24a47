---@meta eightys.httpd
-- The content server (require("eightys.httpd") or require("aio.lib.httpd");
-- server/http.lua calls default_initialize).

---@class httpd
---@field root string the site root being served
---@field master_key string|nil
---@field session_store {get: fun(self, id: string): table|nil, set: fun(self, id: string, data: table), delete: fun(self, id: string)}
---@field acl table<string, {allow?: string|string[], deny?: string|string[]}>|nil route ACLs by path prefix ("/admin" covers /admin/...); the longest prefix decides
---@field security_headers table<string, string|false>|false|nil merged over SECURITY_DEFAULTS (false drops one); false: none. Strict-Transport-Security goes out on TLS requests only
---@field SECURITY_DEFAULTS table<string, string> X-Content-Type-Options, Referrer-Policy, X-Frame-Options, Content-Security-Policy (frame-ancestors)
httpd = {}

---Serve the site: opts.root, opts.master_key (16+ bytes, "b64:..."), opts.no_static, opts.dev.
---@param opts {root?: string, master_key?: string, no_static?: boolean, dev?: boolean}
---@return httpd
function httpd:initialize(opts) end

---Serve from the environment: PUBLIC_HTML (folder with main.lua + public_html/, or the
---site root; default server/www/), MASTER_KEY, NO_STATIC.
---@return httpd
function httpd:default_initialize() end

---Rebuild the routes from the site root; the number of files.
---@return integer|nil
---@return string|nil err
function httpd:scan() end

---Run main.lua (beside the site root, or in it) if there is one.
---@return string|nil path
function httpd:run_main() end

---A URL for endpoint with params, encrypted when a master key is set.
---@param endpoint string
---@param params? table
---@return string
function httpd:to_url(endpoint, params) end

---Render a Jinja2 template of the site.
---@param name string
---@param tbl? table
---@return string|nil text
---@return string|nil err
function httpd:render(name, tbl) end

---Share plain data with Jinja2 pages.
---@param name string
---@param value any
function httpd:expose(name, value) end

-- What a template block (<?lu ?> / <?lua ?>) sees.
---@class templatecontext
---@field query table<string, string|table> query parameters; query.e: the decrypted ones
---@field form table<string, string|{filename: string, content_type: string, data: string, size: integer}>
---@field session table persists across requests of one client
---@field locals table shared by the blocks of one page
---@field headers table<string, string>
---@field body string|nil nil when the body is in a file (fd.body_file)
---@field method string
---@field endpoint string
local templatecontext = {}

---Write text; with arguments string.format with string arguments HTML-escaped.
---@param fmt string
function templatecontext.write(fmt, ...) end

---HTML-escape.
---@param s string
---@return string
function templatecontext.escape(s) end

---Response status.
---@param code integer|string
function templatecontext.status(code) end

---A response header.
---@param name string
---@param value string
function templatecontext.header(name, value) end

---Wait for a promise.
---@param promise aiopromise
---@return any ...
function templatecontext.await(promise) end

---Finish an async block.
function templatecontext.done() end

---fn(page) -> page, applied to the finished page.
---@param fn fun(page: string): string
function templatecontext.post_render(fn) end

---A URL with params, encrypted when MASTER_KEY is set.
---@param endpoint string
---@param params? table
---@return string
function templatecontext.to_url(endpoint, params) end

---Render a Jinja2 template of the site.
---@param name string
---@param tbl? table
---@return string|nil
function templatecontext.render(name, tbl) end

return httpd
