-- Test app for the master's "give up" path (tests/test_process.py): a raw echo
-- server whose workers start normally, but once the file named by $CRASH_MARKER
-- exists, every newly started worker exits with code 1 about 50 ms after it
-- became ready. The test creates the marker after start-up and kills a worker, so
-- its replacements keep dying right after starting.

function on_data(elfd, fd, data)
    net.write(elfd, fd, data)
end

function on_init()
    local marker = io.open(os.getenv("CRASH_MARKER") or "", "r")
    if marker then
        marker:close()
        aio:set_timeout(function() os.exit(1) end, 0.05)
    end
end
