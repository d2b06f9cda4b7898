import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { start } from '../harness/process.ts';

// The Python client (clients/python) is tested by its own pytest suite, against a real
// `sluice serve` from this checkout (nats-server for map, TCP connections cut for real); this
// file runs that suite and mypy --strict from `npm test`, in the examples' venv, and fails with
// their output. A vitest file rather than a step in the npm script: one test command, one
// report, the same timeouts, and it runs beside the other files in the pool.

const ROOT = new URL('..', import.meta.url).pathname;

async function runPython(
  python: string,
  args: string[],
  cwd: string,
): Promise<{ code: number; output: string }> {
  const child = start(python, args, { cwd, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
  const [code] = (await once(child.child, 'close')) as [number | null];
  return { code: code ?? -1, output: child.output() };
}

describe('Python client (clients/python)', () => {
  let python: string;

  beforeAll(async () => {
    // Idempotent: the venv, pytest, mypy and the client (editable) once; later only checks.
    const { stdout } = await promisify(execFile)('bash', ['scripts/python-deps.sh'], { cwd: ROOT });
    python = stdout.trim().split('\n').pop()!;
  }, 900_000);

  it('pytest: stream, map in both orders, resume after a cut connection, auth, queue timeout', async () => {
    const { code, output } = await runPython(
      python,
      ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', 'clients/python'],
      ROOT,
    );
    expect(code, `pytest exited ${code}:\n${output}`).toBe(0);
    expect(output).toMatch(/\d+ passed/);
    expect(output).not.toMatch(/skipped/);
  }, 300_000);

  it('mypy --strict passes on the package and its tests', async () => {
    const { code, output } = await runPython(python, ['-m', 'mypy'], `${ROOT}clients/python`);
    expect(code, `mypy exited ${code}:\n${output}`).toBe(0);
  }, 120_000);
});
