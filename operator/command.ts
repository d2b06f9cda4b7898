import type { Command } from 'commander';
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
    await runOperator(config);
  });
  program.addCommand(command);
}
