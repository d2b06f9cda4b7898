// Modal's `hook` example (`fake_video_render.remote_gen()`): a CPU endpoint that streams from a
// GPU function through that function's Service URL, with the Sluice client library. Each event
// the GPU function makes is passed on as soon as it arrives; a client that leaves aborts the
// upstream stream, so the GPU stops working for nobody.
import { createServer } from 'node:http';
import { stream } from 'sluice/client';

const port = Number(process.env.PORT ?? 9000);
// In a cluster: the GPU function's Service. `sluice serve` users point it at a local serve.
const renderUrl = process.env.RENDER_URL ?? 'http://fake-video-render.default.svc/';

createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', 'http://hook');
  const upstream = new URL(renderUrl);
  upstream.searchParams.set('chunks', url.searchParams.get('chunks') ?? '10');
  const controller = new AbortController();
  res.on('close', () => controller.abort(new Error('client left')));
  try {
    const events = stream(upstream, { signal: controller.signal });
    const first = await events.next(); // headers only once the GPU function answered
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    for (let next = first; !next.done; next = await events.next()) {
      res.write(`data: ${next.value.data}\n\n`);
    }
    res.end();
  } catch (err) {
    if (controller.signal.aborted) return;
    console.error(`render stream failed: ${err.code ?? ''} ${err.message}`);
    if (!res.headersSent) {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 'render_failed', message: err.message } }));
    } else {
      res.end(`event: error\ndata: ${JSON.stringify({ message: err.message })}\n\n`);
    }
  }
}).listen(port, () => console.log(`hook listening on :${port}, rendering through ${renderUrl}`));
