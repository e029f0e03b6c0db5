-- wrk -s post-1mib.lua: every request is a POST with a 1 MiB body (1048576 bytes)
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
