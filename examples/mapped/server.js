// Modal's `mapped` example: an endpoint that fans `map_me(i)` out over every replica of this
// function (POST <own URL>/_sluice/map, through NATS JetStream) and streams each result back
// as it completes, as text/plain like Modal's version.
//   GET /?n=10&order=input|completion   the streaming endpoint
//   POST /map_me                        one map input (a number) -> "segment <i>\n"
import { createServer } from 'node:http';
import { map } from 'sluice/client';

const port = Number(process.env.PORT ?? 9000);
// Its own Service URL in a cluster; `sluice serve` sets SLUICE_URL to its front port.
const selfUrl = process.env.SLUICE_URL ?? 'http://mapped.default.svc/';
const workMs = Number(process.env.MAP_ME_MS ?? 200);

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', 'http://mapped');
  if (req.method === 'POST' && url.pathname === '/map_me') {
    const i = await readJson(req).catch(() => undefined);
    if (!Number.isInteger(i)) {
      res.writeHead(400, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ error: { code: 'bad_input', message: 'map_me takes an integer' } }));
    }
    await new Promise((resolve) => setTimeout(resolve, workMs)); // the work
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify(`segment ${i}\n`));
  }
  const n = Math.min(Number(url.searchParams.get('n') ?? 10), 10_000);
  const order = url.searchParams.get('order') === 'completion' ? 'completion' : 'input';
  const controller = new AbortController();
  res.on('close', () => controller.abort(new Error('client left')));
  res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'x-content-type-options': 'nosniff' });
  res.flushHeaders();
  try {
    const inputs = Array.from({ length: n }, (_, i) => i);
    for await (const result of map(selfUrl, inputs, { order, signal: controller.signal })) {
      res.write(
        result.ok ? String(result.output) : `segment ${result.index} failed: ${result.error.message}\n`,
      );
    }
    res.end();
  } catch (err) {
    if (!controller.signal.aborted) res.end(`map failed: ${err.message}\n`);
  }
}).listen(port, () => console.log(`mapped listening on :${port}, mapping through ${selfUrl}`));
