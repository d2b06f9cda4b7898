import { decode, type User } from '@nats-io/jwt';
import { functionPermissions, type NatsAuthority } from '../common/nats-auth.ts';
import { labels, NATS_CREDENTIALS_KEY, natsCredentialsSecretName, ownerReference } from './desired.ts';
import type { FunctionView } from './function.ts';
import type { KubeObject } from './kube.ts';
import type { NatsAccounts } from './nats-accounts.ts';

/** The Secret the function's sidecars mount, holding one `.creds` text. Pure. */
export function desiredCredentialsSecret(fn: FunctionView, creds: string): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: {
      name: natsCredentialsSecretName(fn),
      namespace: fn.metadata.namespace,
      labels: labels(fn),
      ownerReferences: [ownerReference(fn)],
    },
    type: 'Opaque',
    data: { [NATS_CREDENTIALS_KEY]: Buffer.from(creds).toString('base64') },
  };
}

/** What a `.creds` text says about itself; undefined when it is not one. */
export function readCredentials(
  creds: string,
): { issuer: string; issuedAt: number; expires?: number; nats: Partial<User> } | undefined {
  const jwt = /-----BEGIN NATS USER JWT-----\s*(\S+)\s*------END NATS USER JWT------/.exec(creds)?.[1];
  if (!jwt) return undefined;
  try {
    const claims = decode<User>(jwt);
    return { issuer: claims.iss, issuedAt: claims.iat, expires: claims.exp, nats: claims.nats };
  } catch {
    return undefined;
  }
}

/** setTimeout's ceiling is about 24.8 days; a later renewal is looked at again in a day. */
const MAX_WAIT_MS = 86_400_000;

/**
 * Issues each function's sidecar credentials and renews them: the live Secret's credentials are
 * kept (so a steady state writes nothing) while they are from the function's account, carry the
 * permissions this version of Sluice gives, live no longer than `ttlSeconds`, and have not reached
 * half their life; otherwise new ones are issued. Old ones stay valid until they expire, so the
 * sidecars (which re-read the mounted file at every reconnect) switch without losing a map.
 */
export class CredentialIssuer {
  readonly #authority: NatsAuthority;
  readonly #ttlSeconds: number;
  readonly #now: () => number;
  readonly #accounts: Pick<NatsAccounts, 'ensureAccount'> | undefined;

  /** `accounts`: where the function's account is pushed before its credentials are handed out. */
  constructor(
    authority: NatsAuthority,
    ttlSeconds: number,
    accounts?: Pick<NatsAccounts, 'ensureAccount'>,
    now: () => number = Date.now,
  ) {
    this.#authority = authority;
    this.#ttlSeconds = ttlSeconds;
    this.#accounts = accounts;
    this.#now = now;
  }

  async secret(
    fn: FunctionView,
    live: KubeObject | undefined,
  ): Promise<{ object: KubeObject; renewInMs: number }> {
    const name = `${fn.metadata.namespace}/${fn.metadata.name}`;
    // Sidecars connect to report load even with map off: their account must be on the server.
    await this.#accounts?.ensureAccount(name);
    const nowSeconds = this.#now() / 1000;
    const data = live?.data?.[NATS_CREDENTIALS_KEY];
    const creds = typeof data === 'string' ? Buffer.from(data, 'base64').toString() : '';
    const current = readCredentials(creds);
    if (current?.expires !== undefined) {
      const lifetime = current.expires - current.issuedAt;
      const renewAt = current.issuedAt + lifetime / 2;
      const permissions = functionPermissions(name);
      const same =
        current.issuer === this.#authority.functionAccount(name).getPublicKey() &&
        JSON.stringify(current.nats.pub?.allow) === JSON.stringify(permissions.pub.allow) &&
        JSON.stringify(current.nats.sub?.allow) === JSON.stringify(permissions.sub.allow);
      if (same && lifetime <= this.#ttlSeconds && nowSeconds < renewAt) {
        return {
          object: desiredCredentialsSecret(fn, creds),
          renewInMs: Math.min(MAX_WAIT_MS, Math.ceil((renewAt - nowSeconds) * 1000)),
        };
      }
    }
    const issued = await this.#authority.functionCredentials(name, {
      ttlSeconds: this.#ttlSeconds,
      now: this.#now,
    });
    return {
      object: desiredCredentialsSecret(fn, issued.creds),
      renewInMs: Math.min(MAX_WAIT_MS, (this.#ttlSeconds * 1000) / 2),
    };
  }
}
