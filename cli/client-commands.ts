import { type Command, Option } from 'commander';
import type { InvokeOptions, MapCommandOptions } from './client-run.ts';

function collectHeader(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** `sluice invoke` and `sluice map`: command-line clients over the `sluice/client` library. */
export function registerClientCommands(program: Command): void {
  program
    .command('invoke')
    .description('call a function and print its events as they arrive')
    .argument('<url>', 'the function URL (e.g. http://localhost:8080/)')
    .option('-d, --data <json>', 'request body (sent as JSON with POST); @FILE reads it from a file')
    .option('-H, --header <K:V>', 'request header (repeatable)', collectHeader, [])
    .option('-X, --method <method>', 'HTTP method (default: GET, or POST with --data)')
    .option('--json', 'print each event as a JSON line {event, id, data}')
    .action(async (url: string, options: InvokeOptions) => {
      const { runInvoke } = await import('./client-run.ts');
      process.exitCode = await runInvoke(url, options);
    });

  program
    .command('map')
    .description("fan inputs out over a function's replicas and print results as JSON lines")
    .argument('<url>', 'the function URL (its /_sluice/map is used)')
    .requiredOption('-i, --inputs <file>', 'a JSON array or JSON lines, one input each; - reads stdin')
    .addOption(
      new Option('--order <order>', 'result order').choices(['input', 'completion']).default('input'),
    )
    .option('-H, --header <K:V>', 'request header (repeatable)', collectHeader, [])
    .option('--no-progress', 'never show the progress bar (it shows only on a terminal)')
    .action(async (url: string, options: MapCommandOptions) => {
      const { runMap } = await import('./client-run.ts');
      process.exitCode = await runMap(url, options);
    });
}
