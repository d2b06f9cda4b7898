import type { Command } from 'commander';
import { SluiceError } from '../common/errors.ts';
import { exitOnSettingError, parseSettings } from '../common/settings.ts';
import { type OperatorConfig, operatorCommand, operatorConfigSchema, operatorSettings } from './config.ts';

/** `sluice operator`: the runtime (Kubernetes client, NATS) loads only when the command runs. */
export function registerOperatorCommand(program: Command): void {
  const command = operatorCommand().action(async (options: Record<string, unknown>) => {
    let config: OperatorConfig;
    try {
      config = parseSettings(operatorConfigSchema, operatorSettings(), options);
    } catch (err) {
      exitOnSettingError('operator', err);
    }
    const { runOperator } = await import('./main.ts');
    try {
      await runOperator(config);
    } catch (err) {
      // Start-up failures (no kubeconfig, API server unreachable) are one line, then exit 1.
      if (!(err instanceof SluiceError)) throw err;
      process.stderr.write(`sluice operator: ${err.message}\n`);
      process.exit(1);
    }
  });
  program.addCommand(command);
}
