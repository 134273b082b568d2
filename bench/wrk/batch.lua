-- bulk: POST /v1/transactions/batch with BENCH_BATCH_SIZE (default 100) uniform transfers.
-- hot-bulk: BENCH_HOT_SHARE (0..1) of each batch's items (the first ones, rounded) between one
-- of the 2 hot accounts and a random cold one (bench/wrk/common.lua hot_pair).
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
local common = require("common")
common.count_responses(true)  -- items accepted per answer; 503 apart from other 5xx

local size = tonumber(os.getenv("BENCH_BATCH_SIZE") or "100")
local hot_items = math.floor(size * tonumber(os.getenv("BENCH_HOT_SHARE") or "0") + 0.5)
count_items = true  -- read by the response counter in this thread's state

function request()
  local items = {}
  for i = 1, size do
    if i <= hot_items then
      items[i] = common.transfer_json(common.hot_pair())
    else
      items[i] = common.transfer_json(common.uniform_pair())
    end
  end
  local body = '{"transactions":[' .. table.concat(items, ",") .. "]}"
  return wrk.format("POST", "/v1/transactions/batch", common.headers, body)
end
