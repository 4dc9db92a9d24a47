-- Test app: compiles, but raises while its top level runs. Start-up must fail
-- (non-zero exit) with this file's name and the marked line on stderr.

function on_data(elfd, fd, data)
    net.write(elfd, fd, data)
end

error("start-up failure on purpose") -- START_ERROR_LINE
