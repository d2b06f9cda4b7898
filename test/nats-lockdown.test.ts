import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection, type Status } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapNames } from '../common/map-streams.ts';
import { ensureMapTopology } from '../common/map-topology.ts';
import { functionPermissions, loadSubject, NatsAuthority, newMasterSecret } from '../common/nats-auth.ts';
import { waitFor } from '../common/net.ts';
import { indices, postMap, type Replica, startReplicas } from '../harness/map-replicas.ts';
import { type SecuredNats, startSecuredNats } from '../harness/nats.ts';

// The fan-out transport locked down, on a real nats-server in operator mode: one account per
// function, sidecar credentials limited to the function's own subjects, rotation by expiry.

const A = 'lock/a';
const B = 'lock/b';
const SETTINGS = { ackWaitSeconds: 30, maxDeliver: 3, retentionSeconds: 600 };

let nats: SecuredNats;
let dir: string;

/** Every status a connection reports, to wait for the server's verdict on an attack. */
function statuses(nc: NatsConnection): Status[] {
  const seen: Status[] = [];
  void (async () => {
    for await (const s of nc.status()) seen.push(s);
  })();
  return seen;
}

const violation = (seen: Status[], text: string) =>
  seen.some((s) => s.type === 'error' && String(s.error?.message).includes(text));

beforeAll(async () => {
  nats = await startSecuredNats(new NatsAuthority(newMasterSecret()));
  dir = await mkdtemp(join(tmpdir(), 'sluice-lockdown-'));
  await nats.addFunction(A);
  await nats.addFunction(B);
});

afterAll(async () => {
  await nats?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('NATS credentials', () => {
  it('refuses a client without credentials, and one whose credentials another operator signed', async () => {
    await expect(connect({ servers: nats.url })).rejects.toThrow(/Authorization Violation/);
    const stranger = new NatsAuthority(newMasterSecret());
    await expect(nats.connectWith((await stranger.functionCredentials(A)).creds)).rejects.toThrow(
      /Authorization Violation/,
    );
  });

  it("allows a function's sidecars exactly its subjects, its streams' API calls and its inbox", () => {
    const { pub, sub } = functionPermissions('ns/fn');
    const { tasksStream: t, resultsStream: r } = mapNames('ns/fn');
    expect(sub.allow).toEqual(['sluice.ns.fn.>', '_INBOX.>']);
    expect(pub.allow).toContain('sluice.ns.fn.>');
    expect(pub.allow).toContain(`$JS.API.CONSUMER.MSG.NEXT.${t}.*`);
    expect(pub.allow).toContain(`$JS.ACK.${t}.>`);
    // Nothing that deletes or reshapes a stream, nor the shared worker consumer.
    expect(pub.allow.filter((s) => /STREAM\.(DELETE|UPDATE)|CONSUMER\.DELETE\.SLUICE_TASKS/.test(s))).toEqual(
      [],
    );
    // Every subject is the function's own or a JetStream call naming one of its two streams.
    for (const subject of pub.allow) {
      expect(
        subject.startsWith('sluice.ns.fn.') ||
          subject === '$JS.API.INFO' ||
          subject.includes(t) ||
          subject.includes(r),
      ).toBe(true);
    }
  });
});

describe("function A's credentials against function B", () => {
  let replicas: Replica[];
  let a: NatsConnection;
  let aStatus: Status[];
  let bAdmin: NatsConnection;
  const bNames = mapNames(B);

  beforeAll(async () => {
    // As the operator does: B's streams exist before its pods start.
    bAdmin = await nats.connectWith((await nats.authority.functionAdminCredentials(B)).creds, 'b-admin');
    await ensureMapTopology(await jetstreamManager(bAdmin), B, SETTINGS, 'owner');
    const bCreds = join(dir, 'b.creds');
    await writeFile(bCreds, (await nats.authority.functionCredentials(B, { ttlSeconds: 3600 })).creds);
    replicas = await startReplicas(2, { nats: nats.url, fn: B, flags: ['--nats-credentials', bCreds] });
    a = await nats.connectWith(
      (await nats.authority.functionCredentials(A, { ttlSeconds: 3600 })).creds,
      'a',
    );
    aStatus = statuses(a);
  });

  afterAll(async () => {
    await Promise.all((replicas ?? []).map((r) => r.stop()));
  });

  const bHas = async (subject: string) =>
    (await jetstreamManager(bAdmin)).streams
      .getMessage(bNames.tasksStream, { last_by_subj: subject })
      .then((m) => m !== null)
      .catch(() => false);

  it("B's map works with B's credentials", async () => {
    const { status, events } = await postMap(replicas[0]!, { inputs: [1, 2, 3] });
    expect(status).toBe(200);
    expect(indices(events).sort()).toEqual([0, 1, 2]);
    expect(events.at(-1)?.event).toBe('done');
    // The sidecars needed nothing their credentials do not allow.
    expect(nats.output()).not.toMatch(/Violation/);
  });

  it("cannot publish a task to B's stream: refused by permission, and B's account never sees it", async () => {
    const subject = `${bNames.tasksOf(randomUUID())}.0`;
    a.publish(subject, JSON.stringify({ echo: 'injected' }));
    await waitFor(() => violation(aStatus, `Publish to "${subject}"`), { what: 'the publish violation' });
    // Even a user of A's account with no permission limits publishes into A's account only:
    // no stream there takes B's subjects, so JetStream has no responder.
    const aAdmin = await nats.connectWith((await nats.authority.functionAdminCredentials(A)).creds);
    await expect(jetstream(aAdmin).publish(subject, '{}')).rejects.toThrow(
      /jetstream is not enabled|no responders/i,
    );
    expect(await bHas(subject)).toBe(false);
    expect(await replicas[0]!.attempts()).not.toHaveProperty(JSON.stringify({ echo: 'injected' }));
  });

  it("cannot read B's results: the subscription is refused", async () => {
    const sub = a.subscribe(`${bNames.resultsSubjects}`);
    const closed = await sub.closed;
    expect(String(closed)).toMatch(/Permissions Violation for Subscription/);
  });

  it("cannot use the JetStream API on B's streams", async () => {
    const jsm = await jetstreamManager(a);
    await expect(jsm.streams.info(bNames.tasksStream)).rejects.toThrow(/permission|timeout/i);
    await waitFor(() => violation(aStatus, `$JS.API.STREAM.INFO.${bNames.tasksStream}`), {
      what: 'the JetStream API violation',
    });
    await expect(
      jsm.streams.getMessage(bNames.resultsStream, {
        last_by_subj: `${bNames.resultsSubjects.slice(0, -2)}.x.accepted`,
      }),
    ).rejects.toThrow(/permission|timeout/i);
    // And in A's own account B's streams do not exist at all.
    const aAdmin = await nats.connectWith((await nats.authority.functionAdminCredentials(A)).creds);
    await expect((await jetstreamManager(aAdmin)).streams.info(bNames.tasksStream)).rejects.toThrow(
      /stream not found/i,
    );
  });

  it("cannot read B's inbox: a spy on every inbox of A's account sees A's replies, none of B's", async () => {
    const spy = await nats.connectWith((await nats.authority.functionCredentials(A)).creds, 'spy');
    const seen: string[] = [];
    const sub = spy.subscribe('_INBOX.>', { callback: (_err, msg) => void seen.push(msg.subject) });
    await spy.flush();
    // B's replicas make JetStream requests (replies to their inboxes) for this whole map.
    const { events } = await postMap(replicas[1]!, { inputs: [4, 5, 6, 7] });
    expect(events.at(-1)?.event).toBe('done');
    await spy.flush(); // anything routed to the spy before B's map ended has arrived now
    expect(seen).toEqual([]);
    // The spy works: a request of A's own account is seen.
    const other = await nats.connectWith((await nats.authority.functionCredentials(A)).creds, 'a2');
    await (await jetstreamManager(other)).getAccountInfo();
    await waitFor(() => seen.length > 0, { what: "the spy to see A's own reply" });
    sub.unsubscribe();
  });

  it("cannot make the server deliver into B's subjects through a reply subject", async () => {
    // Reply subjects are not checked against permissions: JetStream answers an API call to
    // whatever reply the caller names. Inside one account that writes into any stream; this is
    // why each function has an account of its own.
    const aAdmin = await nats.connectWith((await nats.authority.functionAdminCredentials(A)).creds);
    await ensureMapTopology(await jetstreamManager(aAdmin), A, SETTINGS, 'owner');
    const aNames = mapNames(A);
    const intoB = `${bNames.tasksOf(randomUUID())}.0`;
    const intoA = `${aNames.tasksOf(randomUUID())}.0`;
    a.publish(`$JS.API.STREAM.INFO.${aNames.tasksStream}`, '', { reply: intoB });
    a.publish(`$JS.API.STREAM.INFO.${aNames.tasksStream}`, '', { reply: intoA });
    const aTasks = (await jetstreamManager(aAdmin)).streams;
    await waitFor(
      () => aTasks.getMessage(aNames.tasksStream, { last_by_subj: intoA }).then((m) => m !== null),
      { what: "the API answer to land in A's own tasks stream" },
    );
    expect(await bHas(intoB)).toBe(false);
  });

  it("A's load reports reach the operator's account under A's subject, and A cannot speak for B", async () => {
    const operator = await nats.connectWith((await nats.authority.sluiceCredentials()).creds, 'operator');
    const reports: string[] = [];
    operator.subscribe('sluice.*.*.load', {
      callback: (_err, msg) => void reports.push(`${msg.subject} ${msg.string()}`),
    });
    await operator.flush();
    a.publish(loadSubject(B), 'forged');
    a.publish(loadSubject(A), 'inFlight=3');
    await waitFor(() => reports.length > 0, { what: 'the load report' });
    await waitFor(() => violation(aStatus, `Publish to "${loadSubject(B)}"`), {
      what: 'the forged report refused',
    });
    await operator.flush();
    // Real sidecars of this file's other replicas report their load here too: only what this
    // test sent counts.
    const sent = reports.filter((r) => r.endsWith(' forged') || r.endsWith(' inFlight=3'));
    expect(sent).toEqual([`${loadSubject(A)} inFlight=3`]);
  });
});

describe('rotating credentials', () => {
  const C = 'lock/rotate';
  let replicas: Replica[];
  let creds: string;
  let first: Awaited<ReturnType<NatsAuthority['functionCredentials']>>;

  beforeAll(async () => {
    await nats.addFunction(C);
    creds = join(dir, 'rotate.creds');
    first = await nats.authority.functionCredentials(C, { ttlSeconds: 3600 });
    await writeFile(creds, first.creds);
    replicas = await startReplicas(2, {
      nats: nats.url,
      fn: C,
      flags: ['--nats-credentials', creds, '--concurrency', '2'],
    });
  });

  afterAll(async () => {
    await Promise.all((replicas ?? []).map((r) => r.stop()));
  });

  it('the server cuts credentials when they expire', async () => {
    const short = await nats.connectWith(
      (await nats.authority.functionCredentials(C, { ttlSeconds: 4 })).creds,
    );
    const seen = statuses(short);
    await waitFor(() => violation(seen, 'Authentication Expired'), { timeoutMs: 15_000, what: 'the expiry' });
  });

  it('does not break a running map: old credentials cut mid-map, the new file takes over', async () => {
    const inputs = [...Array(6).keys()].map((n) => ({ gate: true, n }));
    let accepted!: () => void;
    const started = new Promise<void>((resolve) => {
      accepted = resolve;
    });
    const map = postMap(replicas[0]!, { inputs }, { onEvent: (e) => e.event === 'accepted' && accepted() });
    await started;
    // Every replica holds gated tasks when its credentials stop working.
    await waitFor(
      async () =>
        (await Promise.all(replicas.map((r) => r.attempts()))).every((a) => Object.keys(a).length > 0),
      { what: 'tasks running on both replicas' },
    );
    // In a cluster the old credentials expire after the operator wrote new ones; revoking them
    // here cuts them at a moment the test chooses, the same way for the proxies.
    await nats.addFunction(C, { [first.user]: Math.floor(Date.now() / 1000) });
    const logs = (r: Replica) => r.proxy.output();
    await waitFor(() => replicas.every((r) => logs(r).includes('NATS disconnected')), {
      what: 'the server to cut the old credentials',
    });
    // The new credentials arrive late (a mounted Secret updates within a minute): the proxies
    // keep retrying meanwhile and reconnect once they can.
    await writeFile(creds, (await nats.authority.functionCredentials(C, { ttlSeconds: 3600 })).creds);
    await waitFor(() => replicas.every((r) => logs(r).includes('NATS reconnected')), {
      timeoutMs: 20_000,
      what: 'both proxies back with the new credentials',
    });
    await Promise.all(replicas.map((r) => fetch(`${r.functionUrl}/open`, { method: 'POST' })));
    const { status, events } = await map;
    expect(status).toBe(200);
    expect(indices(events).sort()).toEqual([0, 1, 2, 3, 4, 5]);
    expect(events.at(-1)).toMatchObject({ event: 'done', json: { count: 6, failed: 0 } });
  });
});
