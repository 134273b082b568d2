-- ceiling: GET /healthz, the HTTP stack alone (no auth, no database).
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
require("common")

wrk.method = "GET"
wrk.path = "/healthz"
