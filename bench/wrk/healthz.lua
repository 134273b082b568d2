-- ceiling: GET /healthz, the HTTP stack alone (no auth, no database).
-- No response(): at tens of thousands of answers per second, copying each into Lua would
-- cost wrk CPU the server needs; wrk's own count of statuses above 399 is enough here.
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
require("common")

wrk.method = "GET"
wrk.path = "/healthz"
