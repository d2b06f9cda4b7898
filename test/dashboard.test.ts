// The Grafana dashboard the chart ships asks only for metrics Sluice really exports: every
// PromQL expression in the rendered ConfigMap is read for its metric names, which must appear
// in the /metrics of a real `sluice proxy` (with map on, over a real nats-server) or a real
// `sluice operator` (against the local API server).
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { freePort } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { find, helmMissing, type Manifest, render } from './support/helm.ts';
import { curl, type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

// Metric names other helpers are adding now, not yet exported by anything on this branch. Each
// must leave this list the day it lands (the test below fails until it does): the list shrinks
// to empty.
const PENDING = new Set([
  // The operator's autoscaler (issue 13, branch wt-autoscale).
  'sluice_autoscaler_desired_replicas',
  // The activator's cold starts (issue 13, branch wt-autoscale).
  'sluice_cold_start_seconds_bucket',
  'sluice_cold_start_seconds_count',
]);

const PROMQL_WORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
]);

/**
 * The metric names a PromQL expression reads: identifiers that are not functions (followed by
 * `(`), keywords, label names (inside `{}` or a `by (...)` list), durations or Grafana variables.
 */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // strings, which may hold anything
    .replace(/\blabel_values\(([^,]*),\s*\w+\s*\)/g, '$1') // Grafana's label_values(metric, label)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
    .replace(/\$\w+/g, ' '); // Grafana variables
  const names = new Set<string>();
  // Not inside a number or a duration (0.99, 1e3, 5m).
  for (const match of stripped.matchAll(/(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = match[0];
    const after = stripped.slice(match.index + word.length).trimStart();
    if (after.startsWith('(') || PROMQL_WORDS.has(word)) continue;
    names.add(word);
  }
  return [...names];
}

/** Every sample name a /metrics text can answer a query for (histograms: _bucket, _sum, _count). */
function exported(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\w+)/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      names.add(name);
      if (kind === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
      if (kind === 'summary') for (const suffix of ['_sum', '_count']) names.add(name + suffix);
    } else if (line && !line.startsWith('#')) {
      names.add(/^[^{\s]+/.exec(line)![0]);
    }
  }
  return names;
}

interface Panel {
  title: string;
  type: string;
  targets?: { expr: string }[];
}

describe('metricNames (PromQL)', () => {
  it.each([
    [
      'sum by (function) (sluice_proxy_streams_active{function=~"$function"})',
      ['sluice_proxy_streams_active'],
    ],
    [
      'histogram_quantile(0.99, sum by (le, function) (rate(a_bucket{x="y{z}"}[$__rate_interval])))',
      ['a_bucket'],
    ],
    ['sum(rate(a_total{code="503"}[5m])) / sum(rate(b_total[5m]))', ['a_total', 'b_total']],
    ['max(x) and on (job) y offset 5m', ['x', 'y']],
    ['increase(c[1h]) > bool 0', ['c']],
    ['label_values(d{namespace=~"$namespace"}, function)', ['d']],
  ])('%s', (expr, names) => {
    expect(metricNames(expr).sort()).toEqual(names.sort());
  });
});

describe.skipIf(helmMissing)('the Grafana dashboard', () => {
  let nats: NatsServer;
  let fn: FunctionServer;
  let px: ProxyUnderTest;
  let operator: RunningOperator;
  let dashboard: { panels: Panel[]; templating: { list: { query?: { query: string } }[] } };

  beforeAll(async () => {
    const manifests = await render(['--set', 'monitoring.dashboard.enabled=true']);
    const configMap = find(manifests, 'ConfigMap', '-dashboard') as Manifest;
    dashboard = JSON.parse(configMap.data['sluice.json']);
    nats = await startNats();
    fn = await startFunctionServer();
    px = await startProxy(fn.url, ['--drain', '0', '--nats', nats.url, '--function', 'default/dash']);
    // One stream through, so that labelled series exist too.
    expect(await curl(`${px.url}/events?count=3`).exit).toBe(0);
    const kubeconfig = inject('kubeconfig');
    const namespace = `dash-${randomUUID().slice(0, 8)}`;
    const kube = await KubeClient.load(kubeconfig);
    await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: namespace } } });
    const config = loadOperatorConfig(
      ['--kubeconfig', kubeconfig, '--namespace', namespace, '--metrics', `127.0.0.1:${await freePort()}`],
      {},
    );
    operator = await startOperator(config, createLogger('operator', 'silent'));
  });

  afterAll(async () => {
    await operator?.stop();
    await px?.proxy.close();
    await fn?.close();
    await nats?.stop();
  });

  async function liveNames(): Promise<Set<string>> {
    const operatorPort = (operator.admin.address() as AddressInfo).port;
    const texts = await Promise.all(
      [`${px.adminUrl}/metrics`, `http://127.0.0.1:${operatorPort}/metrics`].map(async (url) =>
        (await fetch(url)).text(),
      ),
    );
    return new Set(texts.flatMap((text) => [...exported(text)]));
  }

  it('has the panels of issue 18, each with a query', () => {
    const titles = dashboard.panels.filter((p) => p.type !== 'row').map((p) => p.title);
    for (const wanted of [
      'Streams active',
      'Time to first byte',
      'Why streams end',
      'Waiting for a slot',
      'Refused with 503',
      'Replicas: desired and ready',
      'Map tasks by outcome',
      'Cold starts',
    ]) {
      expect(titles).toContain(wanted);
    }
    for (const panel of dashboard.panels.filter((p) => p.type !== 'row')) {
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
    }
  });

  it('queries only metrics that a live proxy or operator exports (or that are pending)', async () => {
    const live = await liveNames();
    const queries = [
      ...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
      // The datasource variable's query is a plugin type, not PromQL.
      ...dashboard.templating.list.flatMap((v) => (typeof v.query === 'object' ? [v.query.query] : [])),
    ];
    const asked = new Set(queries.flatMap(metricNames));
    expect(asked.size).toBeGreaterThan(10);
    const missing = [...asked].filter((name) => !live.has(name) && !PENDING.has(name));
    expect(missing).toEqual([]);
    // A pending name that something exports now, or that no query asks for, leaves the list.
    expect([...PENDING].filter((name) => live.has(name) || !asked.has(name))).toEqual([]);
  });
});
