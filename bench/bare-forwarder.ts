// The baseline the proxy is compared with (every row of `npm run bench`): http-proxy-3 on Node with nothing of Sluice's
// (no limits, heartbeat, metrics or logs), flushing headers as the proxy must. bench/proxy.ts
// runs it as `node bench/bare-forwarder.ts <port> <upstream>`.
import { Agent, createServer } from 'node:http';
import { createProxyServer } from 'http-proxy-3';

const [port, upstream] = process.argv.slice(2);
const proxy = createProxyServer({ target: upstream, agent: new Agent({ keepAlive: true }) });
proxy.on('proxyRes', (_proxyRes, _req, res) => setImmediate(() => res.flushHeaders()));
// Keep-alive as long as the proxy's (620 s): with Node's default 5 s, the client's pooled
// connections raced the forwarder closing them between the paths' turns ("socket hang up").
createServer({ keepAliveTimeout: 620_000 }, (req, res) => proxy.web(req, res)).listen(
  Number(port),
  '127.0.0.1',
);
// A normal exit on SIGINT, so `node --cpu-prof` writes its profile (bench/profile-proxy.ts).
process.on('SIGINT', () => process.exit(0));
