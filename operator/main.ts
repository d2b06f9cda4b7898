import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { createLogger, type Logger } from '../common/log.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import type { OperatorConfig } from './config.ts';
import { Controller } from './controller.ts';
import { KubeClient } from './kube.ts';
import { LeaderElector } from './leader.ts';
import { createOperatorMetrics } from './metrics.ts';
import { MetricsGate } from './metrics-auth.ts';
import { WorkQueue } from './queue.ts';
import type { MapStreams, NatsCredentials } from './reconciler-io.ts';

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
  const nats = config.nats ? await startNats(config, client, log) : undefined;
  const streams = nats?.streams;
  // The autoscaler's signal: the sidecars' load reports over the same NATS (locked down: in the
  // sluice account, where every function account's reports arrive).
  const signal = config.nats
    ? new (await import('./load-signal.ts')).LoadSignal(
        config.nats,
        log,
        (fn) => controller.autoscaler?.urgent(fn),
        {
          credentials: nats?.loadCredentials,
          pendingTasks: nats?.pendingTasks,
        },
      )
    : undefined;
  const controller: Controller = new Controller({
    client,
    config,
    streams,
    credentials: nats?.credentials,
    autoscale: signal ? { signal, registry: metrics.registry } : undefined,
    metrics,
    log,
    enqueue: (key, urgent) => (urgent ? queue.addFirst(key) : queue.add(key)),
    enqueueAfter: (key, ms) => queue.addAfter(key, ms),
  });
  const metricsGate = config.metricsAuth ? new MetricsGate(client) : undefined;
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
      const verdict = await metricsGate?.check(req.headers.authorization).catch((err: unknown) => {
        log.warn({ err }, 'could not review a /metrics token');
        return undefined;
      });
      if (metricsGate && !verdict) {
        sendJsonError(res, 'internal', 'the API server did not answer the token review; try again');
      } else if (verdict && !verdict.allowed) {
        const headers = verdict.code === 'unauthorized' ? { 'www-authenticate': 'Bearer' } : {};
        sendJsonError(res, verdict.code, verdict.message, headers);
      } else {
        res
          .writeHead(200, { 'content-type': metrics.registry.contentType })
          .end(await metrics.registry.metrics());
      }
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

/**
 * NATS as the operator uses it: map streams, and with --nats-auth the keys (its Secret, made on
 * first start), each function's account, and its sidecars' credentials.
 */
async function startNats(
  config: OperatorConfig,
  client: KubeClient,
  log: Logger,
): Promise<{
  streams: MapStreams & { close(): Promise<void> };
  credentials?: NatsCredentials;
  /** The load reports' credentials (the sluice account), when locked down. */
  loadCredentials?: () => Promise<string>;
  /** Map tasks waiting in a function's account, when locked down. */
  pendingTasks?: (fn: string) => Promise<number>;
}> {
  const { StreamManager } = await import('./streams.ts');
  if (!config.natsAuth) return { streams: new StreamManager(config.nats, log, config.mapStreamReplicas) };
  const [
    { loadNatsKeys, ensureActivatorCredentials },
    { NatsAccounts },
    { CredentialIssuer },
    { pendingTasksIn },
  ] = await Promise.all([
    import('./nats-keys.ts'),
    import('./nats-accounts.ts'),
    import('./nats-credentials.ts'),
    import('./load-signal.ts'),
  ]);
  const authority = await loadNatsKeys(client, config.natsAuthSecret, log);
  if (config.activator) await ensureActivatorCredentials(client, authority, config.activator, log);
  const accounts = new NatsAccounts(config.nats, authority, log);
  return {
    streams: new StreamManager(config.nats, log, config.mapStreamReplicas, accounts),
    credentials: new CredentialIssuer(authority, config.natsCredentialsTtl, accounts),
    loadCredentials: async () => (await authority.sluiceCredentials()).creds,
    pendingTasks: (fn) => accounts.inAccount(fn, (nc) => pendingTasksIn(nc, fn)),
  };
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
