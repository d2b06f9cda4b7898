// The container image without a Docker engine: the Dockerfile's shape, the build context docker
// would send (walked with .dockerignore as docker reads it), and the image's /app rebuilt from that
// context with the Dockerfile's own npm install line, whose entrypoint command then runs every
// subcommand far enough to load its lazy runtime with production dependencies only.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import dockerignoreModule from '@balena/dockerignore';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { NATS_SERVER, type Started, start } from '../harness/process.ts';

const run = promisify(execFile);
// A CommonJS module typed with an ES default export: Node hands over the function itself.
const dockerignore = dockerignoreModule as unknown as typeof dockerignoreModule.default;
const ROOT = join(import.meta.dirname, '..');

interface Instruction {
  op: string;
  args: string;
}
interface Stage {
  from: string;
  name?: string;
  instructions: Instruction[];
}

/** Dockerfile instructions by stage, with `\` continuations joined and ARG defaults substituted in FROM. */
function parseDockerfile(text: string): Stage[] {
  const lines = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  const args = new Map<string, string>();
  const stages: Stage[] = [];
  for (const line of lines) {
    const [, op = '', rest = ''] = /^(\w+)\s+(.*)$/.exec(line) ?? [];
    const instruction = { op: op.toUpperCase(), args: rest.replace(/\s+/g, ' ') };
    if (instruction.op === 'ARG' && stages.length === 0) {
      const [key = '', value = ''] = instruction.args.split('=');
      args.set(key, value);
    } else if (instruction.op === 'FROM') {
      const [image = '', , name] = instruction.args.split(' ');
      stages.push({
        from: image.replace(/\$\{(\w+)\}/g, (_, k: string) => args.get(k) ?? ''),
        name,
        instructions: [],
      });
    } else {
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return stages;
}

/** Every file docker would send as the build context: the tree, less what .dockerignore excludes. */
async function buildContext(): Promise<string[]> {
  const rules = (await readFile(join(ROOT, '.dockerignore'), 'utf8')).split('\n');
  const ignore = dockerignore().add(rules);
  const files: string[] = [];
  const walk = async (dir: string) => {
    for (const entry of await readdir(join(ROOT, dir), { withFileTypes: true })) {
      const path = dir ? `${dir}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        // docker walks into an excluded folder only when an exception may let something back in.
        if (entry.name === '.git' || entry.name === 'node_modules') {
          if (!ignore.ignores(path)) files.push(`${path}/`);
          continue;
        }
        await walk(path);
      } else if (!ignore.ignores(path)) {
        files.push(path);
      }
    }
  };
  await walk('');
  return files.sort();
}

const dockerfile = parseDockerfile(await readFile(join(ROOT, 'Dockerfile'), 'utf8'));
const final = dockerfile.at(-1)!;
const deps = dockerfile.find((s) => s.name === 'deps')!;
const runtimeDirs = ['activator', 'api', 'bin', 'cli', 'client', 'common', 'operator', 'proxy'];

describe('Dockerfile', () => {
  it('builds on Node 24 slim (bookworm) in both stages', () => {
    expect(dockerfile.map((s) => s.from)).toEqual(['node:24-bookworm-slim', 'node:24-bookworm-slim']);
  });

  it('installs production dependencies only, as locked, in the build stage', () => {
    const runs = deps.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
    expect(runs.some((r) => /\bnpm (ci|install)\b.*--omit=dev/.test(r))).toBe(true);
    expect(deps.instructions.find((i) => i.op === 'COPY')!.args).toBe('package.json package-lock.json ./');
    expect(final.instructions.some((i) => i.op === 'RUN' && /npm (ci|install)/.test(i.args))).toBe(false);
  });

  it('runs as a numeric non-root user under tini from Debian', () => {
    const user = final.instructions.filter((i) => i.op === 'USER').at(-1)!.args;
    expect(user).toMatch(/^[1-9]\d*(:\d+)?$/);
    expect(final.instructions.some((i) => i.op === 'RUN' && /apt-get install .*\btini\b/.test(i.args))).toBe(
      true,
    );
    const entrypoint = JSON.parse(final.instructions.find((i) => i.op === 'ENTRYPOINT')!.args);
    expect(entrypoint).toEqual(['tini', '--', 'node', 'bin/sluice.js']);
    const workdir = final.instructions.filter((i) => i.op === 'WORKDIR').at(-1)!.args;
    // Node will not strip types under node_modules: the sources must not live there.
    expect(workdir).toBe('/app');
  });

  it('copies every folder the sources import from, and nothing else from the context', () => {
    const copied = final.instructions
      .filter((i) => i.op === 'COPY' && !i.args.startsWith('--from'))
      .map((i) => i.args.split(' ')[0]);
    expect(copied.sort()).toEqual(['package.json', ...runtimeDirs].sort());
  });
});

describe('build context (.dockerignore)', () => {
  let context: string[];
  beforeAll(async () => {
    context = await buildContext();
  });

  it('leaves out dependencies, tool caches, tests, benchmarks and git', () => {
    const leaked = context.filter((f) =>
      /(^|\/)(node_modules|\.sluice|\.git|test|bench|coverage)(\/|$)|\.test\.ts$/.test(f),
    );
    expect(leaked).toEqual([]);
  });

  it('holds everything the Dockerfile copies: the runtime folders and the lockfile', () => {
    for (const dir of runtimeDirs) {
      expect(context.some((f) => f.startsWith(`${dir}/`))).toBe(true);
    }
    expect(context).toContain('package.json');
    expect(context).toContain('package-lock.json');
    expect(context).toContain('bin/sluice.js');
    // Nothing outside them is sent: the context stays small and cache-friendly.
    const outside = context.filter((f) => !runtimeDirs.some((d) => f.startsWith(`${d}/`)));
    expect(outside).toEqual(['package-lock.json', 'package.json']);
  });
});

describe('the image /app as a process', () => {
  let app: string;
  let nats: Started | undefined;
  let proxy: Started | undefined;

  beforeAll(async () => {
    app = join(await mkdtemp(join(tmpdir(), 'sluice-image-')), 'app');
    await mkdir(app);
    // The deps stage: package.json + lockfile, then the Dockerfile's own npm command (the cache clean
    // after it only shrinks the layer, and would wipe this machine's cache).
    const context = await buildContext();
    for (const file of ['package.json', 'package-lock.json']) await cp(join(ROOT, file), join(app, file));
    const npmInstall = deps.instructions
      .filter((i) => i.op === 'RUN')
      .flatMap((i) => i.args.split('&&').map((s) => s.trim()))
      .find((s) => s.startsWith('npm '))!;
    await run('bash', ['-c', npmInstall], {
      cwd: app,
      env: { ...process.env, npm_config_prefer_offline: 'true' },
    });
    // The final stage: only what the context holds, where COPY puts it.
    await rm(join(app, 'package-lock.json'));
    for (const file of context.filter((f) => runtimeDirs.some((d) => f.startsWith(`${d}/`)))) {
      await mkdir(dirname(join(app, file)), { recursive: true });
      await cp(join(ROOT, file), join(app, file));
    }
  }, 300_000);

  afterAll(async () => {
    await proxy?.stop();
    await nats?.stop();
    if (app) await rm(dirname(app), { recursive: true, force: true });
  });

  /** `node bin/sluice.js ...` in /app, as the ENTRYPOINT runs it (tini only forwards signals). */
  const sluice = (args: string[]) =>
    run(process.execPath, ['bin/sluice.js', ...args], {
      cwd: app,
      env: { PATH: process.env.PATH, NODE_ENV: 'production' },
    })
      .then(({ stdout, stderr }) => ({ code: 0, out: stdout + stderr }))
      .catch((e: { code?: number; stdout?: string; stderr?: string }) => ({
        code: e.code ?? 1,
        out: `${e.stdout ?? ''}${e.stderr ?? ''}`,
      }));

  it('has exactly the locked production packages: every one, and none marked dev', async () => {
    const lock = JSON.parse(await readFile(join(ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { version?: string; dev?: boolean; optional?: boolean }>;
    };
    const entries = Object.entries(lock.packages).filter(([path]) => path.startsWith('node_modules/'));
    const dev = entries.filter(([, p]) => p.dev).map(([path]) => path);
    const production = entries.filter(([, p]) => !p.dev && !p.optional).map(([path]) => path);
    expect(dev.length).toBeGreaterThan(0);
    expect(dev.filter((path) => existsSync(join(app, path)))).toEqual([]);
    expect(production.filter((path) => !existsSync(join(app, path)))).toEqual([]);
    // At the locked versions.
    const drifted: string[] = [];
    for (const [path, entry] of entries.filter(([, p]) => !p.dev && !p.optional)) {
      const installed = JSON.parse(await readFile(join(app, path, 'package.json'), 'utf8')) as {
        version: string;
      };
      if (installed.version !== entry.version)
        drifted.push(`${path} ${entry.version} → ${installed.version}`);
    }
    expect(drifted).toEqual([]);
  });

  it.each([['proxy'], ['operator'], ['activator'], ['serve'], ['invoke'], ['map']])(
    'answers `%s --help`',
    async (command) => {
      const { code, out } = await sluice([command, '--help']);
      expect(out).toContain(`Usage: sluice ${command}`);
      expect(code).toBe(0);
    },
  );

  it('loads the operator runtime and stops on a missing kubeconfig with its own error', async () => {
    const { code, out } = await sluice([
      'operator',
      '--kubeconfig',
      join(app, 'no-such-kubeconfig'),
      '--leader-elect=false',
    ]);
    expect(code).not.toBe(0);
    expect(out).toContain('kubeconfig');
    expect(out).not.toMatch(
      /ERR_MODULE_NOT_FOUND|Cannot find (module|package)|ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING/,
    );
  });

  it('loads the activator runtime and stops on a missing kubeconfig with its own error', async () => {
    const { code, out } = await sluice([
      'activator',
      '--nats',
      'nats://127.0.0.1:1',
      '--kubeconfig',
      join(app, 'no-such-kubeconfig'),
    ]);
    expect(code).not.toBe(0);
    expect(out).toContain('kubeconfig');
    expect(out).not.toMatch(
      /ERR_MODULE_NOT_FOUND|Cannot find (module|package)|ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING/,
    );
  });

  it('runs the proxy with map over a real NATS, answers /healthz, and exits on SIGTERM', async () => {
    const [natsPort, listen, admin] = [await freePort(), await freePort(), await freePort()];
    nats = start(NATS_SERVER, [
      '-js',
      '-a',
      '127.0.0.1',
      '-p',
      String(natsPort),
      '-sd',
      join(dirname(app), 'js'),
    ]);
    await waitForPort(natsPort);
    proxy = start(
      process.execPath,
      [
        'bin/sluice.js',
        'proxy',
        `--listen=127.0.0.1:${listen}`,
        `--admin=127.0.0.1:${admin}`,
        `--nats=nats://127.0.0.1:${natsPort}`,
        '--function=default/image-test',
        '--drain=0',
      ],
      { cwd: app, env: { PATH: process.env.PATH, NODE_ENV: 'production' } },
    );
    const health = await waitFor(
      async () => {
        const res = await fetch(`http://127.0.0.1:${admin}/healthz`);
        return res.ok ? res : undefined;
      },
      { timeoutMs: 20_000, what: () => `proxy /healthz from the image's /app (${proxy?.output()})` },
    );
    expect(health.status).toBe(200);
    const exited = new Promise<number | null>((resolve) =>
      proxy!.child.once('exit', (code) => resolve(code)),
    );
    proxy.child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(proxy.output()).not.toMatch(/ERR_MODULE_NOT_FOUND|Cannot find (module|package)/);
  });
});
