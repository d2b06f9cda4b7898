import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WIRE_ERRORS } from '../common/wire-errors.ts';

const README = join(import.meta.dirname, '..', 'README.md');

/** The rows of the README's error list: `| code | status | meaning |` between its markers. */
async function readmeRows(): Promise<string[][]> {
  const text = await readFile(README, 'utf8');
  const list = /<!-- wire-errors -->\n([\s\S]*?)<!-- \/wire-errors -->/.exec(text)?.[1] ?? '';
  return list
    .split('\n')
    .filter((line) => line.startsWith('| `'))
    .map((line) =>
      line
        .slice(1, -1)
        .split(' | ')
        .map((cell) => cell.trim().replace(/^`|`$/g, '')),
    );
}

describe('wire error codes', () => {
  it("README.md's error list is the table in common/wire-errors.ts, row for row", async () => {
    const table = Object.entries(WIRE_ERRORS).map(([code, { status, meaning }]) => [
      code,
      status === undefined ? 'event only' : String(status),
      meaning,
    ]);
    expect(await readmeRows()).toEqual(table);
  });

  it('codes are snake_case words, statuses are HTTP errors', () => {
    for (const [code, { status }] of Object.entries(WIRE_ERRORS)) {
      expect(code).toMatch(/^[a-z]+(_[a-z]+)*$/);
      if (status !== undefined) expect(status).toBeGreaterThanOrEqual(400);
    }
  });
});
