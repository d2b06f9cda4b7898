import { readFile } from 'node:fs/promises';
import type { TestProject } from 'vitest/node';
import { streamingFunctionCrd } from '../operator/crd.ts';
import { leftovers } from '../plane/network.ts';
import { release, up } from '../scripts/cluster.ts';
import { applyObject, waitForCrd } from './support/cluster.ts';

// One local control plane for the whole run (SPEC §6). A plane started with
// `npm run cluster -- up` is reused and left running (warm runs start in about a second);
// otherwise this run starts one and the last test run using it stops it at the end. The CRD is
// applied from the schema in code, so tests see the current one (test/crd.test.ts checks that
// the committed YAML matches it).
//
// A run that started a plane which ran pods checks, once it stopped it, that `down` took away
// all it added to the machine: namespaces, links, routes, firewall tables, and ip_forward's value.
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const ipForward = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
  const plane = await up({ origin: 'tests', user: process.pid });
  project.provide('kubeconfig', plane.kubeconfig);
  await applyObject(plane.kubeconfig, streamingFunctionCrd());
  await waitForCrd(plane.kubeconfig);
  return async () => {
    const stopped = await release(process.pid);
    if (!stopped || !plane.fresh || !plane.ingressUrl) return;
    const left = await leftovers();
    if (left.length > 0) throw new Error(`down left behind: ${left.join(', ')}`);
    const after = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
    if (after !== ipForward)
      throw new Error(`down left ip_forward at ${after.trim()}, was ${ipForward.trim()}`);
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin kubeconfig of the local control plane (.sluice/kubeconfig). */
    kubeconfig: string;
  }
}
