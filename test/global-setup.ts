import type { TestProject } from 'vitest/node';
import { streamingFunctionCrd } from '../operator/crd.ts';
import { release, up } from '../scripts/cluster.ts';
import { applyObject, waitForCrd } from './support/cluster.ts';

// One local control plane for the whole run (SPEC §6). A plane started with
// `npm run cluster -- up` is reused and left running (warm runs start in about a second);
// otherwise this run starts one and the last test run using it stops it at the end. The CRD is
// applied from the schema in code, so tests see the current one (test/crd.test.ts checks that
// the committed YAML matches it).
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const plane = await up({ origin: 'tests', user: process.pid });
  project.provide('kubeconfig', plane.kubeconfig);
  await applyObject(plane.kubeconfig, streamingFunctionCrd());
  await waitForCrd(plane.kubeconfig);
  return async () => {
    await release(process.pid);
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin kubeconfig of the local control plane (.sluice/kubeconfig). */
    kubeconfig: string;
  }
}
