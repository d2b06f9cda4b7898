/**
 * NATS decentralised auth for Sluice (NATS "operator mode"): one NATS account per function, so
 * a function's sidecars live in a namespace of subjects, streams, consumers and inboxes of their
 * own that no other function's credentials can reach (not even through a reply subject, which
 * NATS never checks against permissions). Every key is derived from one master secret, so the
 * only thing to keep is that secret (the operator's Secret; `sluice serve` makes one per run):
 *
 *   operator          signs the accounts; the server trusts its JWT (`operator:` in its config)
 *   account $SYS      the system account: the operator pushes function accounts through it
 *   account sluice    the operator's own: it imports nothing; it exports `sluice.*.*.load`
 *                     so each function's load reports reach it (autoscaling)
 *   account per fn    `<ns>/<name>`: JetStream on, imports the `sluice.<ns>.<name>.load` service
 *   users             sidecars: a fresh key per issue, an expiry, and permissions that allow only
 *                     the function's subjects, its JetStream API calls and its inbox; the
 *                     operator mints itself unrestricted users of an account to manage streams
 *
 * The server learns function accounts at run time from the operator (a `full` resolver: pushes
 * signed by the operator are stored in the resolver's directory); $SYS and sluice are preloaded.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { type Account, encodeAccount, encodeOperator, encodeUser, fmtCreds, type User } from '@nats-io/jwt';
import { fromSeed, type KeyPair, Prefix } from '@nats-io/nkeys';
import { Codec } from '@nats-io/nkeys/lib/codec.js';
import type { NatsConnection } from '@nats-io/transport-node';
import { SluiceError } from './errors.ts';
import { mapNames } from './map-streams.ts';

export class NatsAuthError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NATS_AUTH', message, options);
  }
}

/** Subject of a function's load reports (autoscaling): published by its sidecars, read by the operator. */
export function loadSubject(fn: string): string {
  const [namespace, name] = fn.split('/');
  return `sluice.${namespace}.${name}.load`;
}

const LOAD_EXPORT = 'sluice.*.*.load';

/** Unlimited JetStream for an account: the server's own max_file_store / max_memory_store bound it. */
const JETSTREAM_ON = {
  mem_storage: -1,
  disk_storage: -1,
  streams: -1,
  consumer: -1,
  max_ack_pending: -1,
  mem_max_stream_bytes: -1,
  disk_max_stream_bytes: -1,
  max_bytes_required: false,
};
const ACCOUNT_LIMITS = {
  subs: -1,
  data: -1,
  payload: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
  conn: -1,
  leaf: -1,
};

export interface SubjectPermissions {
  pub: { allow: string[] };
  sub: { allow: string[] };
}

/**
 * What a function's sidecars may do inside the function's account: its own subjects (tasks,
 * results, cancel, load), the JetStream API calls map makes on its own two streams (info,
 * create when missing, read a result, purge a cancelled request's tasks, consumers: the shared
 * worker's and the ordered ones of results), acks of its tasks, and replies to its inbox. Not
 * allowed: deleting or changing a stream, deleting the worker consumer, anything of $SYS.
 */
export function functionPermissions(fn: string): SubjectPermissions {
  const names = mapNames(fn);
  const [namespace, name] = fn.split('/');
  const own = `sluice.${namespace}.${name}.>`;
  const tasks = names.tasksStream;
  const results = names.resultsStream;
  const api = '$JS.API';
  return {
    pub: {
      allow: [
        own,
        `${api}.INFO`,
        ...[tasks, results].flatMap((s) => [
          `${api}.STREAM.INFO.${s}`,
          `${api}.STREAM.CREATE.${s}`,
          `${api}.CONSUMER.CREATE.${s}`,
          `${api}.CONSUMER.CREATE.${s}.>`,
          `${api}.CONSUMER.INFO.${s}.*`,
          `${api}.CONSUMER.MSG.NEXT.${s}.*`,
        ]),
        `${api}.STREAM.MSG.GET.${results}`,
        `${api}.STREAM.PURGE.${tasks}`,
        `${api}.CONSUMER.DELETE.${results}.*`,
        `$JS.ACK.${tasks}.>`,
      ],
    },
    sub: { allow: [own, '_INBOX.>'] },
  };
}

/** 32 random bytes, base64: the master secret every Sluice NATS key derives from. */
export function newMasterSecret(): string {
  return randomBytes(32).toString('base64');
}

function derive(master: Buffer, prefix: Prefix, label: string): KeyPair {
  const raw = createHmac('sha256', master).update(`sluice/nats/${label}`).digest();
  return fromSeed(Codec.encodeSeed(prefix, new Uint8Array(raw)));
}

export interface IssueOptions {
  /** Seconds until the credentials expire; 0: never. */
  ttlSeconds?: number;
  /**
   * The clock (milliseconds, as Date.now) the expiry counts from; tests give a fixed one. Read
   * right before signing: the JWT library stamps `iat` from Date.now then, so the lifetime in the
   * JWT is ttlSeconds, not a second less when a second ends while the key is made.
   */
  now?: () => number;
}

/** A `.creds` file's text (JWT and seed) and what was issued, for the issuer's bookkeeping. */
export interface IssuedCredentials {
  creds: string;
  account: string;
  user: string;
  /** Unix seconds; undefined when it never expires. */
  expires: number | undefined;
}

/** Holds the master secret and derives every key, JWT and credential from it. */
export class NatsAuthority {
  readonly operator: KeyPair;
  readonly system: KeyPair;
  readonly sluice: KeyPair;
  /** The master secret, base64, as given: what the operator's Secret keeps. */
  readonly master: string;
  readonly #master: Buffer;

  constructor(masterBase64: string) {
    const master = Buffer.from(masterBase64, 'base64');
    if (master.length < 32)
      throw new NatsAuthError('the NATS master secret must be at least 32 bytes (base64)');
    this.master = masterBase64;
    this.#master = master;
    this.operator = derive(master, Prefix.Operator, 'operator');
    this.system = derive(master, Prefix.Account, 'account/$SYS');
    this.sluice = derive(master, Prefix.Account, 'account/sluice');
  }

  functionAccount(fn: string): KeyPair {
    mapNames(fn); // refuses anything that is not namespace/name of DNS labels
    return derive(this.#master, Prefix.Account, `account/function/${fn}`);
  }

  operatorJwt(): Promise<string> {
    return encodeOperator('sluice', this.operator, { system_account: this.system.getPublicKey() });
  }

  systemAccountJwt(): Promise<string> {
    return this.#account('SYS', this.system, {
      limits: ACCOUNT_LIMITS,
      exports: [
        // The server's own services; what nsc puts in every system account.
        { name: 'account-monitoring-services', subject: '$SYS.REQ.ACCOUNT.*.*', type: 'service' },
        { name: 'account-monitoring-streams', subject: '$SYS.ACCOUNT.*.>', type: 'stream' },
      ],
    });
  }

  sluiceAccountJwt(): Promise<string> {
    return this.#account('sluice', this.sluice, {
      limits: ACCOUNT_LIMITS,
      exports: [{ name: 'load reports', subject: LOAD_EXPORT, type: 'service' }],
    });
  }

  /** `revocations`: user keys whose credentials issued up to the given Unix second stop working. */
  functionAccountJwt(fn: string, revocations?: Record<string, number>): Promise<string> {
    return this.#account(fn, this.functionAccount(fn), {
      limits: { ...ACCOUNT_LIMITS, ...JETSTREAM_ON },
      ...(revocations ? { revocations } : {}),
      imports: [
        {
          name: 'load reports',
          subject: loadSubject(fn),
          account: this.sluice.getPublicKey(),
          type: 'service',
        },
      ],
    });
  }

  /** The sidecars' credentials of `fn`: a fresh user key, limited to the function's own subjects. */
  functionCredentials(fn: string, options: IssueOptions = {}): Promise<IssuedCredentials> {
    const permissions = functionPermissions(fn);
    return this.#user(`sidecar ${fn}`, this.functionAccount(fn), permissions, options);
  }

  /** Unrestricted credentials in `fn`'s account: the operator's, to manage the function's streams. */
  functionAdminCredentials(fn: string): Promise<IssuedCredentials> {
    return this.#user(`operator ${fn}`, this.functionAccount(fn), undefined, {});
  }

  /** Credentials in the system account: the operator's, to push function accounts. */
  systemCredentials(): Promise<IssuedCredentials> {
    return this.#user('operator $SYS', this.system, undefined, {});
  }

  /** Credentials in the sluice account: the operator's (and an activator's), to read load reports. */
  sluiceCredentials(): Promise<IssuedCredentials> {
    return this.#user('operator sluice', this.sluice, undefined, {});
  }

  /** The activator's: a user of the sluice account that publishes and reads load reports only. */
  activatorCredentials(): Promise<IssuedCredentials> {
    const loads = { allow: [LOAD_EXPORT, '_INBOX.>'] };
    return this.#user('activator', this.sluice, { pub: loads, sub: loads }, {});
  }

  /**
   * What a nats-server must trust (an include file; public, no secret in it): the operator, the
   * system account, and the accounts it knows from the start: $SYS, sluice and `preload`
   * (function accounts known up front: `sluice serve` needs no push). With resolverConfig().
   */
  async trustConfig(preload: string[] = []): Promise<string> {
    const accounts: [string, string][] = [
      [this.system.getPublicKey(), await this.systemAccountJwt()],
      [this.sluice.getPublicKey(), await this.sluiceAccountJwt()],
    ];
    for (const fn of preload) {
      accounts.push([this.functionAccount(fn).getPublicKey(), await this.functionAccountJwt(fn)]);
    }
    return [
      '# Sluice: NATS decentralised auth (operator mode). Generated; do not edit.',
      `operator: ${await this.operatorJwt()}`,
      `system_account: ${this.system.getPublicKey()}`,
      'resolver_preload: {',
      ...accounts.map(([key, jwt]) => `  ${key}: ${jwt}`),
      '}',
      '',
    ].join('\n');
  }

  #account(name: string, key: KeyPair, claims: Partial<Account>): Promise<string> {
    return encodeAccount(name, key, claims, { signer: this.operator });
  }

  async #user(
    name: string,
    account: KeyPair,
    permissions: SubjectPermissions | undefined,
    { ttlSeconds = 0, now = Date.now }: IssueOptions,
  ): Promise<IssuedCredentials> {
    const userKey = fromSeed(Codec.encodeSeed(Prefix.User, new Uint8Array(randomBytes(32))));
    const claims: Partial<User> = permissions ? { pub: permissions.pub, sub: permissions.sub } : {};
    // Nothing asynchronous between this and encodeUser's own Date.now (its iat).
    const expires = ttlSeconds > 0 ? Math.floor(now() / 1000) + ttlSeconds : undefined;
    const jwt = await encodeUser(name, userKey, account, claims, { exp: expires });
    return {
      creds: new TextDecoder().decode(fmtCreds(jwt, userKey)),
      account: account.getPublicKey(),
      user: userKey.getPublicKey(),
      expires,
    };
  }
}

/**
 * Stores an account JWT on the server (and its cluster) through the system account: `nc` must
 * be connected with systemCredentials(). Pushing the same account again is harmless.
 */
export async function pushAccount(nc: NatsConnection, jwt: string): Promise<void> {
  const reply = await nc.request('$SYS.REQ.CLAIMS.UPDATE', jwt, { timeout: 5_000 });
  const answer = reply.json<{
    data?: { code?: number; message?: string };
    error?: { code?: number; description?: string };
  }>();
  if (answer.data?.code !== 200) {
    const why = answer.error?.description ?? answer.data?.message ?? JSON.stringify(answer);
    throw new NatsAuthError(`the NATS server refused the account: ${why}`);
  }
}

/**
 * The account resolver block of a nats-server configuration: a `full` resolver keeping pushed
 * accounts in `dir` (one per function: room for far more than the default 1,000).
 */
export function resolverConfig(dir: string): string {
  return [
    'resolver: {',
    '  type: full',
    `  dir: ${JSON.stringify(dir)}`,
    '  allow_delete: false',
    '  interval: "2m"',
    '  limit: 1000000',
    '}',
    '',
  ].join('\n');
}
