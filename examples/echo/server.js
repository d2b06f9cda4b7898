// The quick-start function: plain Node, no dependencies. It listens on $PORT and
//   GET|POST /?n=5&pause=400   streams n server-sent events, one every `pause` ms; a POSTed
//                              JSON body may carry {"n", "pause", "text"}. Each event has an
//                              id, and a reconnect with Last-Event-ID resumes after it.
//   POST /map                  answers one map input (JSON) with {"echo": input, "pid": ...};
//                              {"fail": "why"} answers 500 so a failing input can be seen;
//                              {"sleepMs": n} takes n ms, for watching results arrive.
//   env STARTUP_DELAY_MS=n     waits n ms before listening (a slow start, as a model load).
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 9000);
const MAX_EVENTS = 1000;

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

function intParam(value, fallback, min, max) {
  const n = Number(value ?? fallback);
  return Number.isInteger(n) && n >= min && n <= max ? n : undefined;
}

async function answerMap(req, res) {
  let input;
  try {
    input = JSON.parse(await readBody(req));
  } catch {
    return sendJson(res, 400, { error: { code: 'BAD_JSON', message: 'map input must be JSON' } });
  }
  if (input && typeof input === 'object' && 'fail' in input) {
    return sendJson(res, 500, { error: { code: 'ASKED_TO_FAIL', message: String(input.fail) } });
  }
  if (input && typeof input === 'object' && Number.isInteger(input.sleepMs)) {
    await new Promise((resolve) => setTimeout(resolve, Math.min(input.sleepMs, 60_000)));
  }
  sendJson(res, 200, { echo: input, pid: process.pid });
}

async function streamEvents(req, res, url) {
  let options = {};
  if (req.method === 'POST') {
    const text = await readBody(req);
    try {
      options = text ? JSON.parse(text) : {};
    } catch {
      return sendJson(res, 400, { error: { code: 'BAD_JSON', message: 'body must be JSON' } });
    }
  }
  const n = intParam(options.n ?? url.searchParams.get('n'), 5, 1, MAX_EVENTS);
  const pause = intParam(options.pause ?? url.searchParams.get('pause'), 400, 0, 60_000);
  if (n === undefined || pause === undefined) {
    return sendJson(res, 400, {
      error: { code: 'BAD_PARAMS', message: `n must be 1..${MAX_EVENTS} and pause 0..60000 (ms)` },
    });
  }
  const text = String(options.text ?? url.searchParams.get('text') ?? 'hello');
  const lastId = Number(req.headers['last-event-id']);
  const first = Number.isInteger(lastId) && lastId >= 0 ? lastId + 1 : 0;

  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  let stopped = false;
  res.on('close', () => {
    stopped = true;
  });
  for (let i = first; i < n && !stopped; i++) {
    if (i > first) await new Promise((resolve) => setTimeout(resolve, pause));
    if (stopped) break;
    res.write(`id: ${i}\nevent: message\ndata: ${JSON.stringify({ i, of: n, text, at: Date.now() })}\n\n`);
  }
  if (!stopped) res.end('event: done\ndata: {}\n\n');
  console.log(
    `${req.method} ${url.pathname} streamed events ${first}..${n - 1}${stopped ? ' (client left)' : ''}`,
  );
}

const server = createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://function');
  const handler =
    req.method === 'POST' && url.pathname === '/map'
      ? answerMap(req, res)
      : req.method === 'GET' || req.method === 'POST'
        ? streamEvents(req, res, url)
        : Promise.resolve(sendJson(res, 405, { error: { code: 'METHOD', message: 'use GET or POST' } }));
  handler.catch((err) => {
    console.error(err);
    if (!res.headersSent) sendJson(res, 500, { error: { code: 'INTERNAL', message: String(err) } });
    else res.destroy(err);
  });
});
// STARTUP_DELAY_MS plays a slow start (a model loading onto a GPU) before the port opens.
const startupDelayMs = Number(process.env.STARTUP_DELAY_MS ?? 0);
setTimeout(() => server.listen(port, () => console.log(`echo listening on :${port}`)), startupDelayMs);
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
