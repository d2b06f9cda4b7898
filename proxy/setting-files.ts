import { checkCredsFile, readSettingFile } from '../common/creds-file.ts';
import { type ProxyConfig, proxySettings } from './config.ts';

function settingName(flag: (typeof proxySettings)[number]['flag']): string {
  const spec = proxySettings.find((s) => s.flag === flag)!;
  return `--${spec.flag} (${spec.env})`;
}

/**
 * Files that settings name are read once at start-up, so a missing or malformed one stops the
 * proxy like any other bad setting (one line, exit 2) instead of failing later inside it.
 */
export function checkSettingFiles(config: Pick<ProxyConfig, 'authTokensFile' | 'natsCredentials'>): void {
  if (config.authTokensFile) readSettingFile(settingName('auth-tokens-file'), config.authTokensFile);
  if (config.natsCredentials) checkCredsFile(settingName('nats-credentials'), config.natsCredentials);
}
