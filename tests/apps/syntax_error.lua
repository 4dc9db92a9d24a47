-- Test app: does not compile. Start-up must fail (non-zero exit) with this
-- file's name and the marked line number on stderr (tests/test_cli.py).

function on_data(elfd, fd, data)
    local reply = = data -- SYNTAX_ERROR_LINE
    net.write(elfd, fd, reply)
end
