import { defineConfig } from 'vitest/config';

const TOOLS_BIN = new URL('./.sluice/bin', import.meta.url).pathname;

// Integration tests start real servers (nats-server, etcd + kube-apiserver, nginx, function
// processes) on loopback; the machine has 2 cores, so files run in a small fork pool.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
    // `sluice serve` finds nats-server on PATH: the one scripts/tools.sh built (the chart's
    // version) comes before Debian's.
    env: { PATH: `${TOOLS_BIN}:${process.env.PATH}` },
  },
});
