import type { Command } from 'commander';
import { exitOnSettingError, parseSettings } from '../common/settings.ts';
import { type ProxyConfig, proxyCommand, proxyConfigSchema, proxySettings } from './config.ts';
import { checkSettingFiles } from './setting-files.ts';

/** `sluice proxy`: the sidecar. Its runtime (prom-client, the NATS client for map) loads only when run. */
export function registerProxyCommand(program: Command): void {
  program.addCommand(
    proxyCommand().action(async (options: Record<string, unknown>) => {
      let config: ProxyConfig;
      try {
        config = parseSettings(proxyConfigSchema, proxySettings, options);
        checkSettingFiles(config);
      } catch (err) {
        exitOnSettingError('proxy', err);
      }
      const { createLogger } = await import('../common/log.ts');
      const { runProxy } = await import('./main.ts');
      const log = createLogger('proxy');
      const proxy = await runProxy(config, log);
      const stop = (signal: NodeJS.Signals) => {
        log.info({ signal }, 'stopping');
        proxy.close().then(
          () => process.exit(0),
          (err: unknown) => {
            log.error({ err }, 'shutdown failed');
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    }),
  );
}
