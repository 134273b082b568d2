-- Shared by the wrk scripts: API key, account naming, status-code counting and the
-- machine-readable summary line that bench/wrk.py parses.
--
-- Environment (all optional): BENCH_API_KEY, BENCH_ACCOUNTS (count), BENCH_ACCOUNT_PREFIX,
-- BENCH_COUNT_CODES (1/0: force counting answers by status code on or off).
-- Accounts are <prefix>0 .. <prefix>(count-1); <prefix>0 and <prefix>1 are the hot ones.
--
-- Counting by status code needs a global response(), and with one defined wrk copies every
-- answer's headers and body into Lua (wrk's SCRIPTING: "expensive"). So it is defined only
-- by scripts that call M.count_responses(); the others report what wrk counts anyway:
-- answers with a status above 399 ("4xx/5xx") and the rest ("2xx").

local M = {}

M.key = os.getenv("BENCH_API_KEY") or "bench-admin"
M.accounts = tonumber(os.getenv("BENCH_ACCOUNTS") or "10000")
M.prefix = os.getenv("BENCH_ACCOUNT_PREFIX") or "bench_"
M.headers = {
  ["Authorization"] = "Bearer " .. M.key,
  ["Content-Type"] = "application/json",
}

-- Two distinct uniformly random accounts.
function M.uniform_pair()
  local a = math.random(0, M.accounts - 1)
  local b = math.random(0, M.accounts - 2)
  if b >= a then b = b + 1 end
  return M.prefix .. a, M.prefix .. b
end

-- With probability hot_share one side (source or destination, at random) is one of the
-- two hot accounts and the other side a cold one; otherwise a uniform pair.
function M.pair(hot_share)
  if hot_share > 0 and math.random() < hot_share then return M.hot_pair() end
  return M.uniform_pair()
end

-- One of the two hot accounts on one side (at random), a cold one on the other.
function M.hot_pair()
  local hot = M.prefix .. math.random(0, 1)
  local cold = M.prefix .. math.random(2, M.accounts - 1)
  if math.random() < 0.5 then return hot, cold end
  return cold, hot
end

function M.transfer_json(source, destination)
  return string.format(
    '{"type":"transfer","amount":%d,"currency":"USD","source":"%s","destination":"%s"}',
    math.random(1, 100), source, destination)
end

-- Per-thread state. `setup` runs in the main Lua state, the rest in each thread's own.
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  -- Each thread its own sequence, different from run to run.
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
  status_counts = {}
  accepted_items = 0
end

-- Items accepted in a batch answer: every item without an error object. Only the batch
-- script sets count_items, so the single-request scenarios do not scan bodies.
local function batch_items_ok(body)
  local items = select(2, string.gsub(body, '"receipt_code"', ""))
  local errors = select(2, string.gsub(body, '"error"%s*:%s*{', ""))
  return items - errors
end

local function response_counter(status, headers, body)
  status_counts[status] = (status_counts[status] or 0) + 1
  if count_items and status >= 200 and status < 300 then
    accepted_items = accepted_items + batch_items_ok(body)
  end
end
M.response_counter = response_counter  -- for scripts with a response() of their own

-- Define the global response() (in this thread's Lua state) unless BENCH_COUNT_CODES=0;
-- `always`: even then (the batch script needs the bodies to count accepted items).
function M.count_responses(always)
  if always or os.getenv("BENCH_COUNT_CODES") ~= "0" then response = response_counter end
end

if os.getenv("BENCH_COUNT_CODES") == "1" then response = response_counter end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t or {}) do
    table.insert(parts, string.format('"%s":%d', tostring(k), v))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local codes, items, mix = {}, 0, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("status_counts") or {}) do
      codes[status] = (codes[status] or 0) + n
    end
    items = items + (thread:get("accepted_items") or 0)
    -- mixed.lua: answers by request kind and status, and fallbacks to transfers.
    for key, n in pairs(thread:get("mix_counts") or {}) do
      mix[key] = (mix[key] or 0) + n
    end
  end
  local e = summary.errors
  if next(codes) == nil then  -- no response(): wrk's own count of statuses above 399
    codes = {["2xx"] = summary.requests - e.status, ["4xx/5xx"] = e.status}
  end
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"codes":%s,"items_ok":%d,' ..
    '"mix":%s,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d}}\n',
    summary.requests, summary.duration, summary.bytes, json_object(codes), items,
    json_object(mix),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end

return M
