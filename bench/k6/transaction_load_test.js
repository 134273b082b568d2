// Async transfers between random funded accounts: POST /v1/transactions, each answered 202.
//
// Against your own server, seed the accounts first, then give k6 the same naming:
//
//   kassa seed --accounts 1000 --balance 100000000 --prefix seed_     # seed_0 .. seed_999
//   BASE_URL=http://127.0.0.1:8000 API_KEY=<write or admin key> K6_ACCOUNTS=1000 \
//       k6 run --vus 64 --duration 30s bench/k6/transaction_load_test.js
//
// (K6_ACCOUNT_PREFIX and K6_CURRENCY too when `kassa seed` got another --prefix / --currency.)
// Without --vus/--duration or RATE: 200 VUs for 5 minutes.
//
// Environment:
//   BASE_URL            default http://127.0.0.1:8000
//   API_KEY             a write or admin key (default bench-admin, the harness's)
//   K6_ACCOUNT_PREFIX   accounts are <prefix>0 .. <prefix><K6_ACCOUNTS-1>; default seed_, the
//                       default of `kassa seed --prefix` (`python -m bench` seeds bench_)
//   K6_ACCOUNTS         how many such accounts exist (`kassa seed --accounts`); default 10000
//   K6_CURRENCY         their currency (`kassa seed --currency`); default USD
//   K6_AMOUNT_MAX       each transfer moves 1 .. K6_AMOUNT_MAX minor units; default 100. Seed a
//                       --balance far above K6_AMOUNT_MAX × the transfers one account may send,
//                       or some answers become 422 insufficient_funds, which fail the run.
//   K6_P99_MS           the accept latency threshold, p(99) of the 202s in ms; default 50
//   K6_CHECK_ACCOUNTS   1 (default): setup() reads the first and last account and warns when
//                       they are missing, of another currency, not active or short of funds
//   (ACCOUNTS and ACCOUNT_PREFIX, the older names, are still read when the K6_ ones are unset.)
//
// Open loop: with RATE set (transfers per second), a `constant-arrival-rate` scenario starts
// RATE iterations every second for DURATION (default 30s) whatever the answers' latency,
// from PRE_VUS (default 64) pre-allocated VUs up to MAX_VUS (default 1024). An iteration that
// finds no free VU is not started and counts in k6's `dropped_iterations`. Do not pass
// --vus/--duration then: they would replace the scenario.
//
// Expected answer: 202 only. This scenario never overdraws on purpose (accounts funded far
// above the amounts), so every other answer fails the run: a 4xx (422 account_not_found when
// the accounts were not seeded or K6_ACCOUNTS/K6_ACCOUNT_PREFIX do not match them, 422
// insufficient_funds when they were funded too thinly, 401/403 for a wrong key, 400 ...), a
// 503 (refused: the server could not take this load), another 5xx (a defect) or a network
// error. Response bodies are discarded (less CPU taken from the server), so failures are told
// apart by status only: the summary's `status_*` counters.
//
// Thresholds (k6 exits 99 when one is crossed):
//   unexpected_status   rate==0        share of answers other than 202 (a Rate metric)
//   checks              rate==1        the same, as the `status is 202` check
//   http_req_failed     rate==0        the same again, as k6 counts it (expected: 202 only)
//   accepted            count>0        at least one transfer accepted
//   http_req_duration{expected_response:true}  p(99)<K6_P99_MS (50)   accept latency of the 202s
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const env = (name, older, fallback) => __ENV[name] || (older && __ENV[older]) || fallback;
const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const API_KEY = __ENV.API_KEY || 'bench-admin';
const ACCOUNTS = parseInt(env('K6_ACCOUNTS', 'ACCOUNTS', '10000'), 10);
const PREFIX = env('K6_ACCOUNT_PREFIX', 'ACCOUNT_PREFIX', 'seed_');
const CURRENCY = env('K6_CURRENCY', null, 'USD');
const AMOUNT_MAX = parseInt(env('K6_AMOUNT_MAX', null, '100'), 10);
const P99_MS = parseFloat(env('K6_P99_MS', null, '50'));
const CHECK_ACCOUNTS = env('K6_CHECK_ACCOUNTS', null, '1') !== '0';
const EXPECTED = [202];

// Every transfer answer lands in exactly one counter; bench/k6.py reads them.
const accepted = new Counter('accepted'); // 202
const status422 = new Counter('status_422'); // account_not_found, insufficient_funds, ...
const status503 = new Counter('status_503'); // refused (overloaded / unavailable)
const status4xx = new Counter('status_4xx_other'); // 400, 401, 403, 409, 413, 429, ...
const status5xx = new Counter('status_5xx_other'); // a defect (docs: only 503 is allowed)
const network = new Counter('status_network_error'); // no answer (status 0)
const unexpected = new Rate('unexpected_status');

// http_req_failed and {expected_response:true} follow the scenario's expected statuses.
http.setResponseCallback(http.expectedStatuses(...EXPECTED));

const RATE = parseInt(__ENV.RATE || '0', 10);
const load = RATE > 0 ? {
  scenarios: {
    open: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: parseInt(__ENV.PRE_VUS || '64', 10),
      maxVUs: parseInt(__ENV.MAX_VUS || '1024', 10),
    },
  },
} : { vus: 200, duration: '5m' };

export const options = {
  ...load,
  thresholds: {
    unexpected_status: ['rate==0'],
    checks: ['rate==1'],
    http_req_failed: ['rate==0'],
    accepted: ['count>0'],
    'http_req_duration{expected_response:true}': [`p(99)<${P99_MS}`],
  },
  // Only the status is read: k6 need not keep the bodies (less CPU taken from the server).
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(90)', 'p(99)', 'p(99.9)'],
};

const headers = { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };

// Warnings only: the thresholds are what fail the run, so a missing seed still exits 99.
export function setup() {
  if (!CHECK_ACCOUNTS) return;
  for (const id of [`${PREFIX}0`, `${PREFIX}${ACCOUNTS - 1}`]) {
    // Not a transfer: its own expected statuses, so it counts in neither http_req_failed nor
    // the thresholds' checks.
    const res = http.get(`${BASE_URL}/v1/accounts/${encodeURIComponent(id)}`, {
      headers, responseType: 'text', responseCallback: http.expectedStatuses(200, 404),
      tags: { name: 'setup account check' },
    });
    if (res.status !== 200) {
      console.warn(`GET /v1/accounts/${id}: ${res.status} ${String(res.body).slice(0, 200)}; ` +
        `seed ${ACCOUNTS} accounts first (kassa seed --accounts ${ACCOUNTS} --prefix ${PREFIX}` +
        ` --currency ${CURRENCY}) or set K6_ACCOUNTS / K6_ACCOUNT_PREFIX to match them`);
      continue;
    }
    const a = res.json();
    const spendable = (a.available ?? a.balance) + (a.overdraft_limit ?? 0);
    if (a.currency !== CURRENCY || a.status !== 'active' || spendable < 100 * AMOUNT_MAX) {
      console.warn(`${id}: currency ${a.currency} (K6_CURRENCY ${CURRENCY}), status ${a.status},` +
        ` ${spendable} spendable (K6_AMOUNT_MAX ${AMOUNT_MAX}): its transfers will be refused`);
    }
  }
}

function randomPair() {
  const a = Math.floor(Math.random() * ACCOUNTS);
  let b = Math.floor(Math.random() * (ACCOUNTS - 1));
  if (b >= a) b += 1;
  return [`${PREFIX}${a}`, `${PREFIX}${b}`];
}

export default function () {
  const [source, destination] = randomPair();
  const body = JSON.stringify({
    type: 'transfer', amount: 1 + Math.floor(Math.random() * AMOUNT_MAX), currency: CURRENCY,
    source, destination,
  });
  const res = http.post(`${BASE_URL}/v1/transactions`, body, { headers });
  const ok = EXPECTED.includes(res.status);
  check(res, { 'status is 202': () => ok });
  unexpected.add(!ok);
  if (ok) accepted.add(1);
  else if (res.status === 422) status422.add(1);
  else if (res.status === 503) status503.add(1);
  else if (res.status === 0) network.add(1);
  else if (res.status < 500) status4xx.add(1);
  else status5xx.add(1);
}
