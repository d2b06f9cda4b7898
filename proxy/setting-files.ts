import { readFileSync } from 'node:fs';
import { SettingError } from '../common/errors.ts';
import { type ProxyConfig, proxySettings } from './config.ts';

const CREDS =
  /-----BEGIN NATS USER JWT-----\s*\S+\s*------END NATS USER JWT------[\s\S]*-----BEGIN USER NKEY SEED-----\s*SU[A-Z2-7]+\s*------END USER NKEY SEED------/;

function settingName(flag: (typeof proxySettings)[number]['flag']): string {
  const spec = proxySettings.find((s) => s.flag === flag)!;
  return `--${spec.flag} (${spec.env})`;
}

function read(flag: Parameters<typeof settingName>[0], path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new SettingError(settingName(flag), `cannot read ${JSON.stringify(path)} (${code})`, {
      cause: err,
    });
  }
}

/**
 * Files that settings name are read once at start-up, so a missing or malformed one stops the
 * proxy like any other bad setting (one line, exit 2) instead of failing later inside it.
 */
export function checkSettingFiles(config: Pick<ProxyConfig, 'authTokensFile' | 'natsCredentials'>): void {
  if (config.authTokensFile) read('auth-tokens-file', config.authTokensFile);
  if (config.natsCredentials && !CREDS.test(read('nats-credentials', config.natsCredentials))) {
    throw new SettingError(
      settingName('nats-credentials'),
      `${JSON.stringify(config.natsCredentials)} is not a NATS .creds file (a user JWT and its NKEY seed)`,
    );
  }
}
