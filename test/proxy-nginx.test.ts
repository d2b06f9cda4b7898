import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { type Nginx, startNginx } from './support/nginx.ts';
import { curl, type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

// function <- sluice proxy (--path-prefix /fn) <- nginx, as an Ingress for path /fn renders it.
let fn: FunctionServer;
let px: ProxyUnderTest;
let nginx: Nginx | undefined;
const kills: (() => void)[] = [];

beforeEach(async () => {
  fn = await startFunctionServer();
  px = await startProxy(fn.url, ['--drain', '0', '--path-prefix', '/fn', '--heartbeat', '0.2']);
});
afterEach(async () => {
  for (const kill of kills.splice(0)) kill();
  await nginx?.stop();
  nginx = undefined;
  await px.proxy.close();
  await fn.close();
});

async function eventsOneByOne(base: string): Promise<void> {
  const client = curl(`${base}/fn/tokens`);
  kills.push(() => client.child.kill());
  const stream = await fn.nextStream();
  expect(stream.req.url).toBe('/tokens'); // the prefix was stripped by the proxy, not nginx
  for (let n = 0; n < 5; n++) {
    await stream.write(`id: ${n}\ndata: token ${n}\n\n`);
    await waitFor(() => client.events().length === n + 1, { what: `event ${n} through nginx and the proxy` });
  }
  // Silence: the proxy's heartbeat comes through both hops too.
  await waitFor(() => client.stdout().includes(': keepalive\n\n'), { what: 'a heartbeat through nginx' });
  stream.res.end();
  expect(await client.exit).toBe(0);
  expect(client.events().map((e) => e.data)).toEqual([0, 1, 2, 3, 4].map((n) => `token ${n}`));
}

describe('behind nginx (ingress-nginx with proxy-buffering off)', () => {
  it('events still arrive one by one through both hops', async () => {
    nginx = await startNginx(px.proxy.publicPort, { location: '/fn' });
    await eventsOneByOne(nginx.url);
  });

  it('a client that leaves is seen by the function through both hops', async () => {
    nginx = await startNginx(px.proxy.publicPort, { location: '/fn' });
    const client = curl(`${nginx.url}/fn/leave`);
    const stream = await fn.nextStream();
    await stream.write('data: one\n\n');
    await waitFor(() => client.events().length === 1);
    client.child.kill('SIGKILL');
    await stream.closed;
    expect(stream.req.socket.destroyed).toBe(true);
  });
});
