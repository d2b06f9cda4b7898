import { type ChildProcess, type SpawnOptions, spawn } from 'node:child_process';
import { once } from 'node:events';

export interface Started {
  child: ChildProcess;
  /** Everything the process printed so far (stdout and stderr). */
  output: () => string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it has exited. */
  stop: (signal?: NodeJS.Signals, graceMs?: number) => Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Spawns a process whose output is captured; tests must `stop()` it (afterEach/afterAll). */
export function start(command: string, args: string[], options: SpawnOptions = {}): Started {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  running.add(child);
  let output = '';
  child.stdout?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    output += d.toString();
  });
  const exited = once(child, 'exit').finally(() => running.delete(child));
  return {
    child,
    output: () => output,
    stop: async (signal = 'SIGTERM', graceMs = 5_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/**
 * The nats-server that scripts/tools.sh builds: the chart's NATS version (Debian's, on PATH for
 * `npm start`, is older than the chart supports).
 */
export const NATS_SERVER = new URL('../.sluice/bin/nats-server', import.meta.url).pathname;

/** `node` here is the project's Node 24 (npm scripts put node_modules/.bin first on PATH). */
export const SLUICE_BIN = new URL('../bin/sluice.js', import.meta.url).pathname;

/** `nodeArgs` go to node itself (a benchmark's `--cpu-prof`). */
export function startSluice(args: string[], options: SpawnOptions = {}, nodeArgs: string[] = []): Started {
  return start(process.execPath, [...nodeArgs, SLUICE_BIN, ...args], options);
}
