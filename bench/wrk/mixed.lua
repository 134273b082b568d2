-- mixed: 70 % transfers, 10 % holds, 10 % captures, 5 % voids, 5 % reversals of the
-- REQUESTS, all async (202), between uniformly random accounts.
--
-- Captures and voids name an earlier hold, reversals an earlier transfer: this thread keeps
-- the receipt codes (from the Location header of their 202s) in two queues and takes the
-- oldest one at least BENCH_LINK_AGE_S seconds old (default 2; os.time() counts whole
-- seconds, so the receipt is more than AGE-1 s old), so that the batch writers have applied
-- it: a capture or void of a hold still `processing` is refused at accept (409
-- hold_not_pending), a reversal of a transfer still processing too (422); such a receipt
-- goes back to the end of its queue (the batch writers may lag seconds behind under load).
-- Each receipt is ended once: a hold is captured or voided, never both; a transfer is
-- reversed whole.
-- When no receipt is old enough (the first seconds of the run) the request is a transfer
-- instead, counted as `<kind>>transfer` in the mix.
--
-- wrk's response() does not say which request it answers, so this script must run with
-- one connection per thread (wrk -tN -cN, bench/scenarios.py `thread_per_connection`):
-- then requests and answers alternate and `sent` is the kind being answered.
--
-- BENCH_MIX="transfer,hold,capture,void,reverse" shares in percent (default 70,10,10,5,5).
package.path = "./bench/wrk/?.lua;./?.lua;" .. package.path
local common = require("common")

local age_s = tonumber(os.getenv("BENCH_LINK_AGE_S") or "2")
local shares = {}
for n in string.gmatch(os.getenv("BENCH_MIX") or "70,10,10,5,5", "[^,]+") do
  table.insert(shares, tonumber(n))
end
local kinds = {"transfer", "hold", "capture", "void", "reverse"}
local cumulative, total = {}, 0
for i, share in ipairs(shares) do
  total = total + share
  cumulative[i] = total
end

local QUEUE_MAX = 20000  -- receipts kept per queue (older ones are dropped)

local function queue() return {first = 1, last = 0} end
local function push(q, code)
  q.last = q.last + 1
  q[q.last] = {code, os.time()}
  if q.last - q.first >= QUEUE_MAX then
    q[q.first] = nil
    q.first = q.first + 1
  end
end
-- The oldest receipt at least age_s old, removed from the queue; nil when none is.
local function pop_aged(q)
  local item = q[q.first]
  if item == nil or os.time() - item[2] < age_s then return nil end
  q[q.first] = nil
  q.first = q.first + 1
  return item[1]
end

local holds, transfers = queue(), queue()
local sent = "transfer"  -- the kind of the request in flight on this thread's connection
local sent_code = nil    -- and the receipt it names (capture, void, reverse)
mix_counts = {}          -- "<kind>:<status>" and "<kind>>transfer" (fallbacks), for done()

local function bump(key) mix_counts[key] = (mix_counts[key] or 0) + 1 end

local function transfer_body(hold)
  local source, destination = common.uniform_pair()
  local body = common.transfer_json(source, destination)
  if hold then body = body:sub(1, -2) .. ',"hold":true}' end
  return body
end

local function post(path, body)
  return wrk.format("POST", path, common.headers, body)
end

function request()
  local r, kind = math.random() * total, "transfer"
  for i, bound in ipairs(cumulative) do
    if r < bound then kind = kinds[i] break end
  end
  if kind == "capture" or kind == "void" or kind == "reverse" then
    local code = pop_aged(kind == "reverse" and transfers or holds)
    if code ~= nil then
      sent, sent_code = kind, code
      -- No body: capture the whole hold, reverse the whole transfer (void takes none).
      return post("/v1/transactions/" .. code .. "/" .. kind, "")
    end
    bump(kind .. ">transfer")
    kind = "transfer"
  end
  sent = kind
  return post("/v1/transactions", transfer_body(kind == "hold"))
end

local count = common.response_counter
function response(status, headers, body)
  count(status, headers, body)
  bump(sent .. ":" .. status)
  if status == 202 and (sent == "hold" or sent == "transfer") then
    local location = headers["location"] or headers["Location"]
    local code = location and string.match(location, "([^/]+)$")
    if code then push(sent == "hold" and holds or transfers, code) end
  elseif (status == 409 and (sent == "capture" or sent == "void"))
      or (status == 422 and sent == "reverse") then
    -- Named receipt not applied yet (409 hold_not_pending: `processing`): try it later.
    push(sent == "reverse" and transfers or holds, sent_code)
  end
end
