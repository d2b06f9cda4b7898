import type { Command } from 'commander';
import { checkCredsFile } from '../common/creds-file.ts';
import { SluiceError } from '../common/errors.ts';
import { exitOnSettingError, parseSettings } from '../common/settings.ts';
import {
  type ActivatorConfig,
  activatorCommand,
  activatorConfigSchema,
  activatorSettings,
} from './config.ts';

/** `sluice activator`: its runtime (Kubernetes client, NATS) loads only when the command runs. */
export function registerActivatorCommand(program: Command): void {
  program.addCommand(
    activatorCommand().action(async (options: Record<string, unknown>) => {
      let config: ActivatorConfig;
      try {
        config = parseSettings(activatorConfigSchema, activatorSettings(), options);
        if (config.natsCredentials)
          checkCredsFile('--nats-credentials (SLUICE_NATS_CREDENTIALS)', config.natsCredentials);
      } catch (err) {
        exitOnSettingError('activator', err);
      }
      const { createLogger } = await import('../common/log.ts');
      const { startActivator } = await import('./main.ts');
      const log = createLogger('activator');
      let activator: Awaited<ReturnType<typeof startActivator>>;
      try {
        activator = await startActivator(config, log);
      } catch (err) {
        if (!(err instanceof SluiceError)) throw err;
        process.stderr.write(`sluice activator: ${err.message}\n`);
        process.exit(1);
      }
      const stop = (signal: NodeJS.Signals) => {
        log.info({ signal }, 'stopping');
        activator.stop().then(
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
