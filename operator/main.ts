import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { createLogger, type Logger } from '../common/log.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import type { OperatorConfig } from './config.ts';
import { Controller } from './controller.ts';
import { KubeClient } from './kube.ts';
import { LeaderElector } from './leader.ts';
import { createOperatorMetrics } from './metrics.ts';
import { WorkQueue } from './queue.ts';

export interface RunningOperator {
  client: KubeClient;
  controller: Controller;
  queue: WorkQueue;
  admin: Server;
  /** True once this replica leads (at once without leader election) and its caches are synced. */
  active: () => boolean;
  stop: () => Promise<void>;
}

const LEASE_NAME = 'sluice-operator';

/**
 * Starts the operator: admin server first (so /healthz answers while it campaigns), then
 * leader election, then informers and workers. Resolves once started; stop() shuts down in
 * reverse order and releases the Lease.
 */
export async function startOperator(
  config: OperatorConfig,
  log: Logger = createLogger('operator'),
): Promise<RunningOperator> {
  const client = await KubeClient.load(config.kubeconfig);
  const queue = new WorkQueue({
    onDone: (_key, ms, error) => {
      metrics.duration.observe(ms / 1000);
      metrics.reconciles.inc({ result: error ? 'error' : 'ok' });
      if (error) {
        const retryable = (error as { retryable?: boolean }).retryable !== false;
        metrics.errors.inc({ kind: retryable ? 'retryable' : 'terminal' });
        log.warn({ err: error, key: _key, retryable }, 'reconcile failed');
      }
    },
  });
  let leading = !config.leaderElect;
  let started = false;
  const metrics = createOperatorMetrics({
    queueDepth: () => queue.depth,
    leader: () => leading,
    apiRequests: () => client.requests,
  });
  // The NATS client loads only when map streams are managed (about 20 MB resident).
  const streams = config.nats
    ? new (await import('./streams.ts')).StreamManager(config.nats, log, config.mapStreamReplicas)
    : undefined;
  // The autoscaler's signal: the sidecars' load reports over the same NATS.
  const signal = config.nats
    ? new (await import('./load-signal.ts')).LoadSignal(config.nats, log, (fn) =>
        controller.autoscaler?.urgent(fn),
      )
    : undefined;
  const controller: Controller = new Controller({
    client,
    config,
    streams,
    autoscale: signal ? { signal, registry: metrics.registry } : undefined,
    metrics,
    log,
    enqueue: (key, urgent) => (urgent ? queue.addFirst(key) : queue.add(key)),
  });
  const ready = () => leading && started && controller.synced;

  const admin = createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    } else if (path === '/readyz') {
      // A standby is healthy but not ready: only the leader reconciles.
      const ok = ready();
      res
        .writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' })
        .end(ok ? 'ok\n' : 'not leading or not synced\n');
    } else if (path === '/metrics') {
      res
        .writeHead(200, { 'content-type': metrics.registry.contentType })
        .end(await metrics.registry.metrics());
    } else {
      sendJsonError(res, 'not_found', `no route ${path}`);
    }
  });
  admin.listen(config.metrics.port, config.metrics.host);
  await once(admin, 'listening');

  let elector: LeaderElector | undefined;
  let workers: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      controller.autoscaler?.stop();
      queue.stop();
      await workers;
      await controller.stop();
      await signal?.stop();
      await elector?.stop();
      leading = false;
      await streams?.close();
      admin.closeAllConnections();
      await new Promise<void>((resolve) => admin.close(() => resolve()));
      client.close();
      log.info('operator stopped');
    })();
    return stopping;
  };

  const begin = async () => {
    await controller.start();
    started = true;
    log.info({ namespace: config.namespace || '(all)' }, 'caches synced, reconciling');
    workers = queue.run(config.workers, (key) => controller.reconcile(key));
    controller.autoscaler?.start();
    void workers.catch((err) => log.error({ err }, 'worker failed'));
  };

  if (config.leaderElect) {
    elector = new LeaderElector(client, {
      namespace: config.leaderElectionNamespace,
      name: LEASE_NAME,
      identity: config.identity,
      leaseDurationSeconds: config.leaseDuration,
      retryPeriodMs: Math.max(200, (config.leaseDuration * 1000) / 5),
      log,
    });
    // Campaign in the background: a standby must keep serving /healthz while it waits.
    void elector
      .campaign(() => {
        // Another replica may already be reconciling: stop at once, as client-go's elector does.
        leading = false;
        void stop().then(() => process.exit(1));
      })
      .then(async (won) => {
        if (!won) return;
        leading = true;
        await begin();
      })
      .catch((err) => log.error({ err }, 'leader election failed'));
  } else {
    await begin();
  }

  return { client, controller, queue, admin, active: ready, stop };
}

/** `sluice operator`: runs until SIGTERM/SIGINT, then shuts down cleanly. */
export async function runOperator(config: OperatorConfig): Promise<void> {
  const log = createLogger('operator');
  const operator = await startOperator(config, log);
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  log.info({ signal }, 'shutting down');
  await operator.stop();
}
