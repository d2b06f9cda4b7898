import { defineConfig } from 'vitest/config';

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
  },
});
