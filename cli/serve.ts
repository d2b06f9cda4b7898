import { type Command, Option } from 'commander';
import type { ServeOptions } from './serve-run.ts';

/** `sluice serve <file.yaml> [-- command ...]`: a StreamingFunction on this machine, no cluster. */
export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('run a StreamingFunction locally: its function processes, a proxy for each, one front port')
    .argument('<file>', 'StreamingFunction manifest (YAML)')
    .argument('[command...]', "after --: the function's command, instead of spec.command/args")
    .option('--replicas <n>', 'function processes to run (default: spec.scaling.minReplicas, at least 1)')
    .option('--port <port>', 'front port that spreads requests over the replicas', '8080')
    .option('--host <host>', 'front address (0.0.0.0 to reach it from other machines)', '127.0.0.1')
    .addOption(
      new Option(
        '--auth-tokens-file <file>',
        'accepted bearer tokens, one a line (required when spec.auth.secretName is set)',
      ).env('SLUICE_AUTH_TOKENS_FILE'),
    )
    .action(async (file: string, command: string[], options: ServeOptions) => {
      const { runServe } = await import('./serve-run.ts');
      await runServe(file, command, options);
    });
}
