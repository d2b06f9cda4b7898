// `npm run gen`: writes the CRD generated from the API (api/v1alpha1/) to crds/ and the chart.
// `npm run gen -- --check` writes nothing and exits 1 when a committed file is stale.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { GENERATED_FILES } from '../operator/crd.ts';

const root = join(import.meta.dirname, '..');
const check = process.argv.includes('--check');
let stale = 0;
for (const [path, render] of Object.entries(GENERATED_FILES)) {
  const file = join(root, path);
  const wanted = render();
  const current = await readFile(file, 'utf8').catch(() => undefined);
  if (current === wanted) continue;
  if (check) {
    console.error(`${path} is stale: run npm run gen`);
    stale++;
    continue;
  }
  await mkdir(dirname(file), { recursive: true });
  await writeFile(file, wanted);
  console.log(`wrote ${path}`);
}
process.exitCode = stale > 0 ? 1 : 0;
