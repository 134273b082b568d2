-- async / hot / sync / single: one transfer per POST /v1/transactions.
-- BENCH_HOT_SHARE (0..1): share of requests touching one of the 2 hot accounts.
-- BENCH_WAIT=1: ?wait=true (answer after execution, 201).
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
local common = require("common")
common.count_responses()  -- 503 (refused) must be told from other 5xx (defects)

local hot_share = tonumber(os.getenv("BENCH_HOT_SHARE") or "0")
local path = "/v1/transactions"
if os.getenv("BENCH_WAIT") == "1" then path = path .. "?wait=true" end

function request()
  local source, destination = common.pair(hot_share)
  return wrk.format("POST", path, common.headers, common.transfer_json(source, destination))
end
