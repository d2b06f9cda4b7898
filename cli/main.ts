import { Command } from 'commander';
import { registerActivatorCommand } from '../activator/command.ts';
import { registerOperatorCommand } from '../operator/command.ts';
import { registerProxyCommand } from '../proxy/command.ts';
import { registerClientCommands } from './client-commands.ts';
import { registerServeCommand } from './serve.ts';

// Each register* adds one subcommand whose action imports its runtime lazily, so
// `sluice proxy` never loads the Kubernetes client and `sluice invoke` loads neither.
const program = new Command('sluice')
  .description('Streaming GPU functions on Kubernetes')
  .showHelpAfterError()
  .enablePositionalOptions();
registerProxyCommand(program);
registerOperatorCommand(program);
registerActivatorCommand(program);
registerServeCommand(program);
registerClientCommands(program);

await program.parseAsync(process.argv);
