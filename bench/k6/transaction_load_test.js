// The original load test, against Kassa: async transfers among random accounts.
//
//   k6 run --vus 200 --duration 5m transaction_load_test.js
//
// Environment: BASE_URL (default http://127.0.0.1:8000), API_KEY (a write or admin key),
// ACCOUNTS (how many funded accounts exist, named <ACCOUNT_PREFIX><n> for n in 0..ACCOUNTS-1;
// `python -m bench` creates bench_0 .. bench_9999), ACCOUNT_PREFIX (default bench_).
//
// Open loop: with RATE set (transfers per second), a `constant-arrival-rate` scenario starts
// RATE iterations every second for DURATION (default 30s) whatever the answers' latency,
// from PRE_VUS (default 64) pre-allocated VUs up to MAX_VUS (default 1024). An iteration that
// finds no free VU is not started and counts in k6's `dropped_iterations`. Do not pass
// --vus/--duration then: they would replace the scenario.
//
// Thresholds: accept latency p99 under 50 ms, and no transaction dropped: every answer is
// a 202 (accepted, so it will complete or fail) or a 422 (refused by a business rule,
// nothing posted). A 503, 5xx, 4xx or a network error counts in `dropped`.
import http from 'k6/http';
import { Counter } from 'k6/metrics';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const API_KEY = __ENV.API_KEY || 'bench-admin';
const ACCOUNTS = parseInt(__ENV.ACCOUNTS || '10000', 10);
const PREFIX = __ENV.ACCOUNT_PREFIX || 'bench_';

const accepted = new Counter('accepted');
const rejected = new Counter('rejected');
const dropped = new Counter('dropped');
const overloaded = new Counter('overloaded');

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
    'http_req_duration{expected_response:true}': ['p(99)<50'],
    dropped: ['count==0'],
  },
  // Only the status is read: k6 need not keep the bodies (less CPU taken from the server).
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(50)', 'p(90)', 'p(99)', 'p(99.9)'],
};

const params = {
  headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
  responseCallback: http.expectedStatuses(202),
};

function randomPair() {
  const a = Math.floor(Math.random() * ACCOUNTS);
  let b = Math.floor(Math.random() * (ACCOUNTS - 1));
  if (b >= a) b += 1;
  return [`${PREFIX}${a}`, `${PREFIX}${b}`];
}

export default function () {
  const [source, destination] = randomPair();
  const body = JSON.stringify({
    type: 'transfer', amount: 1 + Math.floor(Math.random() * 100), currency: 'USD',
    source, destination,
  });
  const res = http.post(`${BASE_URL}/v1/transactions`, body, params);
  if (res.status === 202) {
    accepted.add(1);
  } else if (res.status === 422) {
    rejected.add(1);
  } else {
    dropped.add(1);
    if (res.status === 503) overloaded.add(1);
  }
}
