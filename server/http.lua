-- The content server: serves a site directory the 80s way (see README,
-- "Content server"): templates (.dyn.), static files, Jinja2 pages (.j2.html),
-- sessions, forms and encrypted URLs.
--   eightys server/http.lua -p 8080                 # serves public_html/
--   PUBLIC_HTML=path/to/site eightys server/http.lua
-- Environment: PUBLIC_HTML (site root), MASTER_KEY (URL encryption), NO_STATIC=true.
-- Reloading re-runs this file: the site is rescanned and main.lua re-run.

require("eightys.httpd"):default_initialize()
