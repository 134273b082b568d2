-- bulk: POST /v1/transactions/batch with BENCH_BATCH_SIZE (default 100) uniform transfers.
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
local common = require("common")
common.count_responses(true)  -- items accepted per answer; 503 apart from other 5xx

local size = tonumber(os.getenv("BENCH_BATCH_SIZE") or "100")
count_items = true  -- read by the response counter in this thread's state

function request()
  local items = {}
  for i = 1, size do
    items[i] = common.transfer_json(common.uniform_pair())
  end
  local body = '{"transactions":[' .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", "/v1/transactions/batch", common.headers, body)
end
