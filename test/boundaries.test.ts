import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = join(import.meta.dirname, '..');

async function importsOf(file: string): Promise<string[]> {
  const source = await readFile(join(ROOT, file), 'utf8');
  return [
    ...source.matchAll(/(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => (m[1] ?? m[2])!);
}

// The sidecar runs in every function pod, so it must stay small: nothing under proxy/ (or the
// common modules it uses) may pull in the Kubernetes client, directly or through a local import.
async function localImportGraph(entry: string): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  const pending = [entry];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (graph.has(file)) continue;
    const specifiers = await importsOf(file);
    graph.set(file, specifiers);
    for (const s of specifiers) if (s.startsWith('.')) pending.push(join(file, '..', s));
  }
  return graph;
}

async function sources(folder: string): Promise<string[]> {
  const files = (await readdir(join(ROOT, folder), { recursive: true })).filter((f) => f.endsWith('.ts'));
  return files.map((f) => join(folder, f));
}

/** Each import of the folder's files: local ones as repo paths (`common/errors.ts`), packages as named. */
async function importsFrom(folder: string): Promise<{ from: string; to: string }[]> {
  const edges: { from: string; to: string }[] = [];
  for (const file of await sources(folder)) {
    for (const s of await importsOf(file)) {
      edges.push({ from: file, to: s.startsWith('.') ? relative(ROOT, join(ROOT, file, '..', s)) : s });
    }
  }
  return edges;
}

const topFolder = (path: string) => path.split('/')[0]!;
const isPackage = (to: string) => !to.includes('.ts') && !to.startsWith('node:');

describe('module boundaries', () => {
  it('proxy/ never imports @kubernetes/client-node', async () => {
    const files = await sources('proxy');
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      const graph = await localImportGraph(file);
      for (const [from, specifiers] of graph) {
        expect(
          specifiers.filter((s) => s.startsWith('@kubernetes/')),
          `${from} (reached from ${file})`,
        ).toEqual([]);
      }
    }
  });

  // Which local folders each folder may import (besides itself); node: builtins are always fine.
  const allowed: [folder: string, folders: string[], packages: RegExp][] = [
    ['common', [], /^(@nats-io\/|pino$|zod$|commander$)/],
    ['api', ['common'], /^zod$/],
    ['client', ['common'], /^eventsource-parser$/],
    ['proxy', ['common'], /^(@nats-io\/|prom-client$|zod$|commander$|pino$)/],
    ['operator', ['api', 'common'], /^(@kubernetes\/|@nats-io\/|prom-client$|zod$|commander$|yaml$)/],
    // The activator is data path (proxy's header rules) plus a watcher of functions (operator's
    // Kubernetes client and informer); neither of those imports it.
    ['activator', ['api', 'common', 'proxy', 'operator'], /^(@nats-io\/|prom-client$|zod$|commander$)/],
    // The local plane's node side: a kubelet for processes, on the operator's small API client.
    ['plane', ['common', 'operator'], /^(yaml$|zod$)/],
  ];
  it.each(allowed)('%s/ imports only %j and its own packages', async (folder, folders, packages) => {
    const edges = await importsFrom(folder);
    expect(edges.length).toBeGreaterThan(0);
    const wrong = edges.filter(({ to }) => {
      if (to.startsWith('node:')) return false;
      if (isPackage(to)) return !packages.test(to);
      return topFolder(to) !== folder && !folders.includes(topFolder(to));
    });
    expect(wrong).toEqual([]);
  });

  it('cli/ reaches operator/ only through the `sluice operator` command entry', async () => {
    const edges = (await importsFrom('cli')).filter(({ to }) => topFolder(to) === 'operator');
    expect(edges).toEqual([{ from: 'cli/main.ts', to: 'operator/command.ts' }]);
  });
});
