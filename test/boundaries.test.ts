import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// The sidecar runs in every function pod, so it must stay small: nothing under proxy/ (or the
// common modules it uses) may pull in the Kubernetes client, directly or through a local import.
async function localImportGraph(entry: string): Promise<Map<string, string[]>> {
  const graph = new Map<string, string[]>();
  const pending = [entry];
  while (pending.length > 0) {
    const file = pending.pop()!;
    if (graph.has(file)) continue;
    const source = await readFile(file, 'utf8');
    const specifiers = [
      ...source.matchAll(/(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g),
    ].map((m) => (m[1] ?? m[2])!);
    graph.set(file, specifiers);
    for (const s of specifiers) if (s.startsWith('.')) pending.push(join(file, '..', s));
  }
  return graph;
}

describe('module boundaries', () => {
  it('proxy/ never imports @kubernetes/client-node', async () => {
    const files = (await readdir('proxy', { recursive: true })).filter((f) => f.endsWith('.ts'));
    expect(files.length).toBeGreaterThan(0);
    for (const file of files) {
      const graph = await localImportGraph(join('proxy', file));
      for (const [from, specifiers] of graph) {
        expect(
          specifiers.filter((s) => s.startsWith('@kubernetes/')),
          `${from} (reached from proxy/${file})`,
        ).toEqual([]);
      }
    }
  });
});
