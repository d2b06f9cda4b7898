import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../common/net.ts';
import { type Started, startSluice } from '../harness/process.ts';
import { echoClient } from './support/grpc-echo.ts';

// `sluice serve` with a gRPC function (spec.protocol h2c): the front port speaks h2c and
// forwards each call over HTTP/2 to a replica's proxy, which talks h2c to the function.

let serve: Started;
let target: string;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-serve-grpc-'));
  const manifest = join(dir, 'echo-grpc.yaml');
  const echo = new URL('./support/grpc-echo.ts', import.meta.url).pathname;
  writeFileSync(
    manifest,
    `apiVersion: sluice.dev/v1alpha1
kind: StreamingFunction
metadata:
  name: echo-grpc
spec:
  image: local
  command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(echo)}]
  protocol: h2c
  scaling:
    minReplicas: 2
    maxReplicas: 2
`,
  );
  const port = await freePort();
  serve = startSluice(['serve', manifest, '--port', String(port)]);
  target = `127.0.0.1:${port}`;
  await waitFor(() => serve.output().includes(' ready with 2 replica(s)'), {
    timeoutMs: 60_000,
    what: `serve to be ready:\n${serve.output()}`,
  });
}, 90_000);

afterAll(async () => {
  await serve?.stop('SIGTERM', 15_000);
});

describe('sluice serve: gRPC through the front port', () => {
  it('bidirectional calls interleave, with metadata and trailers, on both replicas', async () => {
    const client = echoClient(target);
    const run = async (id: string) => {
      const md = new grpc.Metadata();
      md.set('x-echo-id', id);
      const call = client.Bidi(md);
      const echoes: string[] = [];
      call.on('data', (m: Buffer) => echoes.push(m.toString()));
      let initial: grpc.Metadata | undefined;
      call.on('metadata', (m) => {
        initial = m;
      });
      const status = new Promise<grpc.StatusObject>((resolve) => call.on('status', resolve));
      for (let n = 0; n < 5; n++) {
        call.write(Buffer.from(`${id}-${n}`));
        await waitFor(() => echoes.length === n + 1, { what: `echo ${n} of ${id}` });
      }
      call.end();
      const done = await status;
      expect(done.code).toBe(grpc.status.OK);
      expect(initial?.get('x-echo-id')).toEqual([id]);
      expect(done.metadata.get('x-echo-id-trailer')).toEqual([id]);
      return echoes;
    };
    const [a, b] = await Promise.all([run('a'), run('b')]);
    expect(a).toEqual(['a-0', 'a-1', 'a-2', 'a-3', 'a-4']);
    expect(b).toEqual(['b-0', 'b-1', 'b-2', 'b-3', 'b-4']);
    // The two calls in flight went to different replicas (least calls in flight first).
    for (const replica of ['echo-grpc-0', 'echo-grpc-1']) {
      await waitFor(
        () =>
          new RegExp(
            `\\[${replica} proxy\\] info request finished .*path=/sluice.test.Echo/Bidi .*grpcStatus=OK`,
          ).test(serve.output()),
        { what: `a call logged by ${replica}'s proxy:\n${serve.output()}` },
      );
    }
    client.close();
  });

  it("a client's cancel reaches the function through the front port and the proxy", async () => {
    const client = echoClient(target);
    const md = new grpc.Metadata();
    md.set('x-echo-id', 'to-cancel');
    const call = client.Bidi(md);
    call.on('error', () => {});
    const echoes: string[] = [];
    call.on('data', (m: Buffer) => echoes.push(m.toString()));
    call.write(Buffer.from('hello'));
    await waitFor(() => echoes.length === 1, { what: 'the first echo' });
    call.cancel();
    await waitFor(() => /fn\] cancelled Bidi to-cancel/.test(serve.output()), {
      what: `the function to see the cancel:\n${serve.output()}`,
    });
    client.close();
  });
});
