import type { Logger } from '../common/log.ts';
import { NatsAuthority, newMasterSecret } from '../common/nats-auth.ts';
import { NATS_CREDENTIALS_KEY } from './desired.ts';
import { isConflict, isNotFound, type KubeClient, type KubeObject, resourcePath } from './kube.ts';
import { readCredentials } from './nats-credentials.ts';

/** The key of the auth Secret that a nats-server includes: public, nothing secret in it. */
export const TRUST_KEY = 'trust.conf';
const MASTER_KEY = 'master';

/**
 * The NATS keys, kept in one Secret the operator makes on its first start (a chart cannot make
 * NKEYs or sign JWTs): `master` (every key derives from it; only the operator reads it) and
 * `trust.conf` (the operator and system accounts' JWTs, which the chart's NATS mounts). Made once
 * and never rewritten; two replicas starting at once settle on whichever was created first.
 * Not owned by the Helm release, so keys (and every function's account) survive a reinstall.
 */
export async function loadNatsKeys(client: KubeClient, secret: string, log: Logger): Promise<NatsAuthority> {
  const [namespace = '', name = ''] = secret.split('/');
  const path = resourcePath('v1', 'secrets', namespace, name);
  const read = async () => {
    const live = await client.get<KubeObject>(path);
    const master = live.data?.[MASTER_KEY];
    if (typeof master !== 'string') {
      throw new Error(
        `Secret ${secret} has no ${MASTER_KEY} key: delete it to have the operator make a new one`,
      );
    }
    return new NatsAuthority(Buffer.from(master, 'base64').toString());
  };
  try {
    return await read();
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const authority = new NatsAuthority(newMasterSecret());
  const made = await createSecret(client, namespace, name, 'nats-auth', {
    [MASTER_KEY]: authority.master,
    [TRUST_KEY]: await authority.trustConfig(),
  });
  if (!made) return read(); // another replica made it first
  log.info({ secret }, 'made the NATS keys (operator, system and sluice accounts)');
  return authority;
}

/**
 * The activator's NATS credentials, in the Secret `<activator service>-nats-credentials` of its
 * namespace, which the chart's activator mounts: a user of the sluice account that may only
 * publish and read load reports. Made when missing; never expires (it lives as long as the keys).
 */
export async function ensureActivatorCredentials(
  client: KubeClient,
  authority: NatsAuthority,
  activator: string,
  log: Logger,
): Promise<void> {
  const [namespace = '', service = ''] = activator.split('/');
  const name = activatorCredentialsSecret(service);
  try {
    const live = await client.get<KubeObject>(resourcePath('v1', 'secrets', namespace, name));
    const creds = Buffer.from(String(live.data?.[NATS_CREDENTIALS_KEY] ?? ''), 'base64').toString();
    if (readCredentials(creds)?.issuer !== authority.sluice.getPublicKey()) {
      log.warn(
        { secret: `${namespace}/${name}` },
        'the activator NATS credentials are from other keys: delete the Secret to have new ones made',
      );
    }
    return;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const issued = await authority.activatorCredentials();
  if (await createSecret(client, namespace, name, 'activator', { [NATS_CREDENTIALS_KEY]: issued.creds }))
    log.info({ secret: `${namespace}/${name}` }, 'made the activator NATS credentials');
}

/** Creates a Sluice Secret of `data` (text, encoded here); false when one of that name exists. */
async function createSecret(
  client: KubeClient,
  namespace: string,
  name: string,
  component: string,
  data: Record<string, string>,
): Promise<boolean> {
  try {
    await client.request('POST', resourcePath('v1', 'secrets', namespace), {
      body: {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: {
          name,
          namespace,
          labels: { 'app.kubernetes.io/part-of': 'sluice', 'app.kubernetes.io/component': component },
        },
        type: 'Opaque',
        data: Object.fromEntries(
          Object.entries(data).map(([key, text]) => [key, Buffer.from(text).toString('base64')]),
        ),
      },
    });
    return true;
  } catch (err) {
    if (!isConflict(err)) throw err;
    return false;
  }
}

/** `<activator service>-nats-credentials`. */
export function activatorCredentialsSecret(service: string): string {
  return `${service}-nats-credentials`;
}
