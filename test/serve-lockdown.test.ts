import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../common/net.ts';
import { type Started, startSluice } from '../harness/process.ts';

// `sluice serve` locked down: tokens required when the manifest asks for auth, its NATS
// refuses clients without credentials, and a function that dies at once is reported at once.

const ECHO = resolve('examples/echo/server.js');

function manifest(spec: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-serve-lock-'));
  const file = join(dir, 'fn.yaml');
  writeFileSync(
    file,
    `apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata: {name: locked}\nspec:\n  image: x\n${spec}`,
  );
  return file;
}

const authed = manifest(
  `  command: [${JSON.stringify(process.execPath)}, ${JSON.stringify(ECHO)}]\n  auth: {secretName: locked-tokens}\n  map: {enabled: true, path: /map}\n`,
);

async function exitOf(serve: Started): Promise<number | null> {
  await waitFor(() => serve.child.exitCode !== null, {
    timeoutMs: 20_000,
    what: `serve to exit: ${serve.output()}`,
  });
  return serve.child.exitCode;
}

describe('sluice serve of a function with spec.auth.secretName', () => {
  it('refuses to start without tokens, saying how to give them', async () => {
    const serve = startSluice(['serve', authed], { env: { ...process.env, SLUICE_AUTH_TOKENS_FILE: '' } });
    expect(await exitOf(serve)).toBe(2);
    expect(serve.output()).toContain('spec.auth.secretName (locked-tokens) asks for bearer tokens');
    expect(serve.output()).toContain('--auth-tokens-file (SLUICE_AUTH_TOKENS_FILE)');
  });

  it('refuses a tokens file it cannot read, naming the setting', async () => {
    const serve = startSluice(['serve', authed, '--auth-tokens-file', '/nonexistent']);
    expect(await exitOf(serve)).toBe(2);
    expect(serve.output()).toMatch(
      /--auth-tokens-file \(SLUICE_AUTH_TOKENS_FILE\): cannot read "\/nonexistent" \(ENOENT\)/,
    );
  });

  describe('with tokens', () => {
    let serve: Started;
    let url: string;

    beforeAll(async () => {
      const tokens = join(mkdtempSync(join(tmpdir(), 'sluice-tokens-')), 'tokens');
      writeFileSync(tokens, '# serve test\nsecret-token\n');
      const port = await freePort();
      // Through the environment twin, as a user exporting it would.
      serve = startSluice(['serve', authed, '--port', String(port), '--replicas', '1'], {
        env: { ...process.env, SLUICE_AUTH_TOKENS_FILE: tokens },
      });
      await waitFor(() => /\[serve\] locked ready/.test(serve.output()), {
        timeoutMs: 30_000,
        what: `serve to be ready: ${serve.output()}`,
      });
      url = `http://127.0.0.1:${port}`;
    });

    afterAll(async () => {
      await serve?.stop('SIGTERM', 15_000);
    });

    it('answers 401 without a token and streams with one', async () => {
      const refused = await fetch(`${url}/?n=1`);
      expect(refused.status).toBe(401);
      expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
      const ok = await fetch(`${url}/?n=1`, { headers: { authorization: 'Bearer secret-token' } });
      expect(ok.status).toBe(200);
      expect(await ok.text()).toContain('event: done');
    });

    it('runs map through its own nats-server, which refuses a client without credentials', async () => {
      const map = await fetch(`${url}/_sluice/map`, {
        method: 'POST',
        headers: { authorization: 'Bearer secret-token' },
        body: '{"inputs":[1,2]}',
      });
      expect(map.status).toBe(200);
      expect(await map.text()).toContain('event: done');
      const natsUrl = /nats-server with JetStream on (nats:\/\/[\d.:]+)/.exec(serve.output())?.[1];
      expect(natsUrl).toBeDefined();
      await expect(connect({ servers: natsUrl! })).rejects.toThrow(/Authorization Violation/);
    });
  });
});

describe('sluice serve of a function that exits at once', () => {
  let serve: Started;
  let url: string;

  beforeAll(async () => {
    const crashing = manifest(
      `  command: [${JSON.stringify(process.execPath)}, -e, "console.error('loading weights'); console.error('boom: no model at /models/x'); process.exit(3)"]\n`,
    );
    const port = await freePort();
    serve = startSluice(['serve', crashing, '--port', String(port), '--replicas', '2']);
    await waitFor(() => serve.output().includes('front port'), {
      what: `serve to listen: ${serve.output()}`,
    });
    url = `http://127.0.0.1:${port}`;
  });

  afterAll(async () => {
    await serve?.stop('SIGTERM', 15_000);
  });

  it('answers 503 function_crashed with the exit code and last line once the first restarts failed', async () => {
    const response = await fetch(`${url}/`);
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    const { error } = (await response.json()) as { error: { code: string; message: string } };
    // Not the 30 s no_replica wait: the crash is named as soon as it is known.
    expect(error.code).toBe('function_crashed');
    expect(error.message).toMatch(/exited with code 3 \(\d+ times in a row\)/);
    expect(error.message).toContain('boom: no model at /models/x');
  });
});
