import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { NatsAuthority, newMasterSecret, resolverConfig } from '../common/nats-auth.ts';

export interface LocalNatsFiles {
  /** nats-server's configuration: trusts this run's operator and knows the function's account. */
  config: string;
  /** The function's credentials, shared by its replicas' proxies as a Secret is in a cluster. */
  credentials: string;
}

/**
 * `sluice serve`'s NATS is locked down as a cluster's is: keys made for this run (never
 * written anywhere but `dir`), the function's account preloaded, its proxies' credentials
 * limited to its subjects, and no way in without them.
 */
export async function writeLocalNatsFiles(dir: string, fn: string): Promise<LocalNatsFiles> {
  const authority = new NatsAuthority(newMasterSecret());
  const config = join(dir, 'nats.conf');
  const credentials = join(dir, 'function.creds');
  await writeFile(config, (await authority.trustConfig([fn])) + resolverConfig(join(dir, 'accounts')), {
    mode: 0o600,
  });
  await writeFile(credentials, (await authority.functionCredentials(fn)).creds, { mode: 0o600 });
  return { config, credentials };
}
