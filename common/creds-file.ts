import { readFileSync } from 'node:fs';
import { SettingError } from './errors.ts';

const CREDS =
  /-----BEGIN NATS USER JWT-----\s*\S+\s*------END NATS USER JWT------[\s\S]*-----BEGIN USER NKEY SEED-----\s*SU[A-Z2-7]+\s*------END USER NKEY SEED------/;

/** Reads a file a setting names; unreadable: a SettingError naming the setting (one line, exit 2). */
export function readSettingFile(setting: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new SettingError(setting, `cannot read ${JSON.stringify(path)} (${code})`, { cause: err });
  }
}

/** A NATS `.creds` file a setting names must be readable and hold a user JWT and its seed. */
export function checkCredsFile(setting: string, path: string): void {
  if (!CREDS.test(readSettingFile(setting, path))) {
    throw new SettingError(
      setting,
      `${JSON.stringify(path)} is not a NATS .creds file (a user JWT and its NKEY seed)`,
    );
  }
}
