-- The content server: serves a site directory the 80s way (see README,
-- "Content server"): templates (.dyn.), static files, Jinja2 pages (.j2.html),
-- sessions, forms and encrypted URLs.
--   eightys server/http.lua -p 8080                   # server/www/ if there is one, else public_html/
--   PUBLIC_HTML=server/www/ eightys server/http.lua   # 80s: server/www/main.lua + server/www/public_html/*
--   PUBLIC_HTML=path/to/site eightys server/http.lua  # a folder without public_html/ is the site root
-- Environment: PUBLIC_HTML, MASTER_KEY (URL encryption), NO_STATIC=true.
-- Reloading re-runs this file: the site is rescanned and main.lua re-run.

require("eightys.httpd"):default_initialize()
