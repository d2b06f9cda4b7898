import type { TestProject } from 'vitest/node';
import { streamingFunctionCrd } from '../operator/crd.ts';
import { down, up } from '../scripts/cluster.ts';
import { applyObject, waitForCrd } from './support/cluster.ts';

// One local control plane for the whole run (SPEC §6): reused when `npm run cluster -- up` left
// one running, else started here and stopped at the end (SLUICE_KEEP_CLUSTER=1 keeps it for the
// next run, which then starts in about a second). The CRD is applied from the schema in code,
// so tests always see the current one (test/crd.test.ts checks the committed YAML matches).
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const plane = await up();
  project.provide('kubeconfig', plane.kubeconfig);
  await applyObject(plane.kubeconfig, streamingFunctionCrd());
  await waitForCrd(plane.kubeconfig);
  return async () => {
    if (plane.fresh && process.env.SLUICE_KEEP_CLUSTER !== '1') await down();
  };
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin kubeconfig of the local control plane (.sluice/kubeconfig). */
    kubeconfig: string;
  }
}
