-- main.lua runs when the content server starts and on every reload (globals
-- survive reloads: write `x = x or ...` for state that must persist).
-- What it defines is visible to every template; httpd:expose shares plain data
-- with Jinja2 pages.

SITE = SITE or { name = "eightys", started = os.date("!%Y-%m-%d %H:%M:%S UTC") }

--- A few rows for the loop demo (and the .dyn. benchmark page).
function demo_rows(n)
    local rows = {}
    for i = 1, n do
        rows[i] = { id = i, name = "row " .. i, square = i * i }
    end
    return rows
end

httpd:expose("site", SITE)

