import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { GRPC_STATUS } from '../common/grpc.ts';
import { WIRE_ERRORS, WIRE_GRPC_STATUS } from '../common/wire-errors.ts';

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

  it("README.md's gRPC list says what WIRE_GRPC_STATUS does, row for row", async () => {
    const text = await readFile(README, 'utf8');
    const list = /<!-- grpc-errors -->\n([\s\S]*?)<!-- \/grpc-errors -->/.exec(text)?.[1] ?? '';
    const rows = list.split('\n').filter((line) => line.startsWith('| `'));
    expect(rows.length).toBeGreaterThan(0);
    for (const row of rows) {
      const [codes, status] = row.slice(1, -1).split(' | ');
      const [, number, name] = /^(\d+) `([A-Z_]+)`$/.exec(status!.trim())!;
      expect(GRPC_STATUS[name as keyof typeof GRPC_STATUS]).toBe(Number(number));
      for (const [, code] of codes!.matchAll(/`([a-z_]+)`/g)) {
        expect(Object.keys(WIRE_ERRORS)).toContain(code);
        expect([code, WIRE_GRPC_STATUS[code as keyof typeof WIRE_GRPC_STATUS]]).toEqual([code, name]);
      }
    }
  });
});
