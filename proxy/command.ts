import { setFlagsFromString } from 'node:v8';
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
      // The old generation grows by 20% at a time, not by V8's up-to-4x while the heap grows fast:
      // idle streams are long-lived, and the default left about 1.7 KB per idle stream of heap no
      // object used (bench/RESULTS.md). Not in PROXY_NODE_FLAGS: NODE_OPTIONS refuses this flag.
      setFlagsFromString('--heap-growing-percent=20');
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
