// NATS events and control against a real nats-server (Debian package nats-server; .ci/run installs
// it) on a loopback port chosen at run time, with a real coordinator and worker.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  connect,
  createInbox,
  credsAuthenticator,
  headers,
  nkeys,
  StorageType,
  type ConnectionOptions,
  type NatsConnection,
} from 'nats';
import { pino } from 'pino';
import { NatsBridge } from '../src/coordinator/nats-bridge.js';
import { RunControl } from '../src/coordinator/run-control.js';
import { Fleet, listeningAddress, TINY, type FleetProcess, type LogLine } from './fleet-harness.js';

const fleet = new Fleet();
const servers: ChildProcess[] = [];
const connections: NatsConnection[] = [];
const bridges: NatsBridge[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(connections.splice(0).map((c) => c.close().catch(() => undefined)));
  await Promise.all(bridges.splice(0).map((b) => b.close()));
  await fleet.cleanup();
  for (const s of servers.splice(0)) s.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

async function natsServer(port: number, extra: string[] = []): Promise<ChildProcess> {
  const bin = existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server';
  const p = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), ...extra], { stdio: ['ignore', 'ignore', 'pipe'] });
  servers.push(p);
  await new Promise<void>((resolve, reject) => {
    let out = '';
    p.on('error', (e) =>
      reject(new Error(`nats-server is needed for this test (Debian package nats-server): ${e.message}`)),
    );
    p.stderr!.on('data', (d) => {
      out += d;
      if (out.includes('Server is ready')) resolve();
    });
    p.on('exit', (code) => reject(new Error(`nats-server exited with ${code}: ${out}`)));
  });
  return p;
}

async function stopServer(p: ChildProcess): Promise<void> {
  const gone = new Promise((resolve) => p.once('exit', resolve));
  p.kill('SIGKILL');
  await gone;
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'tricaps-nats-'));
  dirs.push(d);
  return d;
}

/** Polls until probe gives something truthy, failing after ms with what was awaited. */
async function until<T>(probe: () => T | Promise<T>, ms: number, what: string): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what} in vain`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Subscribes to the events of a run, collecting them in order. */
function collect(nc: NatsConnection, run: string): { kind: string; body: Record<string, unknown> }[] {
  const seen: { kind: string; body: Record<string, unknown> }[] = [];
  nc.subscribe(`tricaps.${run}.events.>`, {
    callback: (_e, m) =>
      seen.push({ kind: m.subject.split('.').pop()!, body: JSON.parse(new TextDecoder().decode(m.data)) }),
  });
  return seen;
}

type KeyPair = ReturnType<typeof nkeys.createUser>;

/**
 * A NATS JWT as nsc writes one (header, claims, ed25519 signature by the issuer's nkey; the jti is the
 * base32 SHA-512/256 of the claims), for a server in operator mode.
 */
function natsJwt(issuer: KeyPair, subject: string, name: string, nats: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const claims = { jti: '', iat: Math.floor(Date.now() / 1000), iss: issuer.getPublicKey(), name, sub: subject };
  const withNats = { ...claims, nats: { ...nats, version: 2 } };
  const digest = createHash('sha512-256').update(JSON.stringify(withNats)).digest();
  let bits = 0;
  let value = 0;
  let jti = '';
  for (const byte of digest) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      jti += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) jti += 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567'[(value << (5 - bits)) & 31];
  const signed = `${b64({ typ: 'JWT', alg: 'ed25519-nkey' })}.${b64({ ...withNats, jti })}`;
  return `${signed}.${Buffer.from(issuer.sign(Buffer.from(signed))).toString('base64url')}`;
}

/** A user of the account (signed by its key): the text of a .creds file (JWT + nkey seed). */
function userCreds(account: KeyPair, name: string): string {
  const user = nkeys.createUser();
  const jwt = natsJwt(account, user.getPublicKey(), name, {
    type: 'user',
    pub: {},
    sub: {},
    subs: -1,
    data: -1,
    payload: -1,
  });
  const seed = new TextDecoder().decode(user.getSeed());
  return `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n${seed}\n------END USER NKEY SEED------\n`;
}

/** A coordinator NATS refuses: the refusal is logged as an error, and training goes on without it. */
async function trainsRefusedByNats(coord: FleetProcess): Promise<void> {
  fleet.worker(await listeningAddress(coord), 'b');
  const refusal = await coord.waitFor(
    (l) => /^cannot use NATS at nats:\/\/127\.0\.0\.1:\d+: .*Authorization Violation/i.test(l.msg),
    30_000,
    'the authorization failure in the log',
  );
  expect(refusal.level).toBe(50);
  await coord.waitFor((l) => /^step 3 loss/.test(l.msg), 60_000, 'steps without NATS');
  expect(coord.lines.some((l) => l.msg.startsWith('connected to NATS'))).toBe(false);
}

describe('NATS events and control', () => {
  it('publishes lifecycle events, obeys pause/resume/checkpoint/stop, refuses bad commands, survives NATS going away', async () => {
    const port = await freePort();
    let server = await natsServer(port);
    const url = `nats://127.0.0.1:${port}`;
    const nc = await connect({ servers: url });
    connections.push(nc);
    const seen: { kind: string; body: Record<string, unknown> }[] = [];
    nc.subscribe('tricaps.nats-run.events.>', {
      callback: (_e, m) =>
        seen.push({ kind: m.subject.split('.').pop()!, body: JSON.parse(new TextDecoder().decode(m.data)) }),
    });
    const ask = async (command: string, body: string) =>
      JSON.parse(
        new TextDecoder().decode(
          (await nc.request(`tricaps.nats-run.control.${command}`, new TextEncoder().encode(body), { timeout: 20_000 }))
            .data,
        ),
      );
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-nats-'));
    dirs.push(dir);

    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--run-id',
      'nats-run',
      '--nats',
      url,
      '--nats-step-interval',
      '2',
      '--nats-control-token',
      'sesame',
      '--checkpoint-dir',
      dir,
      '--metrics-port',
      '0',
    ]);
    const worker = fleet.worker(await listeningAddress(coord), 'evented');
    const metricsPort = (await coord.waitFor((l) => typeof l.metricsPort === 'number', 30_000, 'the metrics line'))
      .metricsPort as number;
    /** A series of the coordinator as scraped now. */
    const scrape = async (name: string) =>
      Number(
        new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, 'm').exec(
          await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(),
        )?.[1],
      );
    /** tricaps_paused (the stalled and checkpoint alerts stay quiet while it is 1). */
    const pausedGauge = () => scrape('tricaps_paused');
    await coord.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the NATS connection');
    await coord.waitFor((l) => /^step 4 loss/.test(l.msg), 60_000, 'step 4');
    await nc.flush();
    const kinds = new Set(seen.map((e) => e.kind));
    expect(kinds).toContain('run_started'); // published before the connection, sent once connected
    expect(kinds).toContain('worker_joined');
    expect(kinds).toContain('step_summary');
    const summary = seen.find((e) => e.kind === 'step_summary')!.body;
    expect(summary).toMatchObject({ schema: 'tricaps.event/v1', kind: 'step_summary', run: 'nats-run', step: 2 });
    expect(await scrape('tricaps_nats_events_dropped_total')).toBe(0); // the series is there from the start

    // Refused: unknown command, malformed payload, no token. The run goes on.
    expect(await ask('selfdestruct', '{"token":"sesame"}')).toMatchObject({
      ok: false,
      reason: expect.stringMatching(/unknown command "selfdestruct"; commands are pause, resume, checkpoint, stop/),
    });
    expect(await ask('pause', 'not json{')).toMatchObject({
      ok: false,
      reason: 'malformed command: payload is not JSON',
    });
    expect(await ask('pause', '{}')).toMatchObject({ ok: false, reason: expect.stringMatching(/^unauthorised/) });

    // Pause: no steps while paused; resume: steps again; checkpoint now.
    const paused = await ask('pause', '{"token":"sesame"}');
    expect(paused).toMatchObject({
      ok: true,
      command: 'pause',
      done: expect.stringMatching(/^paused before step \d+$/),
    });
    // The reply (NATS) can overtake the last step's log line (stderr pipe): wait for that line.
    await coord.waitFor(
      (l) => /^step \d+ loss/.test(l.msg) && l.step === paused.step - 1,
      30_000,
      'the step before the pause',
    );
    expect(await pausedGauge()).toBe(1);
    const checkpoint = await ask('checkpoint', '{"token":"sesame"}');
    expect(checkpoint).toMatchObject({
      ok: true,
      command: 'checkpoint',
      step: paused.step,
      checkpoint: join(dir, `step-${String(paused.step).padStart(8, '0')}`),
    });
    expect(await ask('resume', '{"token":"sesame"}')).toMatchObject({
      ok: true,
      done: `resumed at step ${paused.step}`,
    });
    expect(await pausedGauge()).toBe(0);
    // No step while paused, decided by order, not by a sleep: the checkpoint and the resume above were
    // taken at the step of the pause, and in the coordinator's log (written in order) the first step
    // at or after it comes after the resume was logged.
    const resumedLine = await coord.waitFor(
      (l) => l.msg.startsWith('NATS command resume'),
      30_000,
      'the resume in the log',
    );
    const firstAfter = await coord.waitFor(
      (l) => /^step \d+ loss/.test(l.msg) && (l.step as number) >= paused.step,
      30_000,
      'the first step after resume',
    );
    expect(firstAfter.step).toBe(paused.step);
    expect(coord.lines.indexOf(firstAfter)).toBeGreaterThan(coord.lines.indexOf(resumedLine));

    // NATS goes away: training goes on; it comes back: events flow again.
    server.kill('SIGKILL');
    const stepsBefore = coord.steps().length;
    await coord.waitFor(() => coord.steps().length >= stepsBefore + 4, 30_000, 'steps without NATS');
    server = await natsServer(port);
    await coord.waitFor((l) => l.msg === 'reconnected to NATS', 30_000, 'the reconnection');
    const nc2 = await connect({ servers: url });
    connections.push(nc2);
    const later: string[] = [];
    nc2.subscribe('tricaps.nats-run.events.>', { callback: (_e, m) => later.push(m.subject) });
    const stopped = JSON.parse(
      new TextDecoder().decode(
        (
          await nc2.request('tricaps.nats-run.control.stop', new TextEncoder().encode('{"token":"sesame"}'), {
            timeout: 20_000,
          })
        ).data,
      ),
    );
    expect(stopped).toMatchObject({
      ok: true,
      command: 'stop',
      done: expect.stringMatching(/^stopping before step \d+/),
    });
    expect((await coord.exited).code).toBe(0);
    expect((await worker.exited).code).toBe(0);
    await nc2.flush();
    expect(later).toContain('tricaps.nats-run.events.checkpoint_saved');
    expect(later).toContain('tricaps.nats-run.events.run_finished');
    expect(seen.some((e) => e.kind === 'checkpoint_saved' && e.body.reason === 'requested')).toBe(true);
  });

  it('SIGTERM while paused by an operator stops the coordinator at once with a checkpoint', async () => {
    const port = await freePort();
    await natsServer(port);
    const url = `nats://127.0.0.1:${port}`;
    const nc = await connect({ servers: url });
    connections.push(nc);
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-nats-'));
    dirs.push(dir);
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--run-id',
      'paused-run',
      '--nats',
      url,
      '--checkpoint-dir',
      dir,
    ]);
    fleet.worker(await listeningAddress(coord), 'w');
    await coord.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the NATS connection');
    await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 60_000, 'step 2');
    const paused = JSON.parse(
      new TextDecoder().decode(
        (await nc.request('tricaps.paused-run.control.pause', new TextEncoder().encode('{}'), { timeout: 20_000 }))
          .data,
      ),
    );
    expect(paused).toMatchObject({ ok: true, command: 'pause' });
    coord.kill('SIGTERM');
    expect((await coord.exited).code).toBe(0);
    expect(coord.raw.join('\n')).toMatch(/stopped at step \d+ \(the step in progress was not applied\)/);
    expect(existsSync(join(dir, `step-${String(paused.step).padStart(8, '0')}`, 'state.json'))).toBe(true);
  });

  it('authenticates with user and password from the environment; bad credentials never stop training', async () => {
    const port = await freePort();
    await natsServer(port, ['--user', 'tricaps', '--pass', 'hunter2-hunter2']);
    const url = `nats://127.0.0.1:${port}`;
    const good = fleet.coordinator(
      [...TINY, '--steps', '100000', '--run-id', 'auth-run', '--nats', url, '--nats-user', 'tricaps'],
      { TRICAPS_NATS_PASSWORD: 'hunter2-hunter2' },
    );
    fleet.worker(await listeningAddress(good), 'a');
    await good.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the authenticated connection');
    expect(good.raw.join('\n')).not.toContain('hunter2');
    const bad = fleet.coordinator(
      [...TINY, '--steps', '100000', '--run-id', 'bad-auth-run', '--nats', url, '--nats-user', 'tricaps'],
      { TRICAPS_NATS_PASSWORD: 'wrong-password' },
    );
    fleet.worker(await listeningAddress(bad), 'b');
    await bad.waitFor((l) => /^step 5 loss/.test(l.msg), 60_000, 'steps without NATS');
    expect(bad.lines.some((l) => l.msg.startsWith('connected to NATS'))).toBe(false);
    const missing = fleet.coordinator([...TINY, '--steps', '1', '--nats', url, '--nats-user', 'tricaps']);
    expect((await missing.exited).code).toBe(2);
    expect(missing.raw.join('\n')).toMatch(/--nats-user needs the password in TRICAPS_NATS_PASSWORD/);
  });

  it('authenticates with TRICAPS_NATS_TOKEN and logs each command with its origin; a wrong token never stops training', async () => {
    const port = await freePort();
    await natsServer(port, ['--auth', 's3cret-token-s3cret']);
    const url = `nats://127.0.0.1:${port}`;
    const nc = await connect({ servers: url, token: 's3cret-token-s3cret' });
    connections.push(nc);
    const seen = collect(nc, 'token-run');
    await nc.flush();
    const good = fleet.coordinator([...TINY, '--steps', '100000', '--run-id', 'token-run', '--nats', url], {
      TRICAPS_NATS_TOKEN: 's3cret-token-s3cret',
    });
    fleet.worker(await listeningAddress(good), 'a');
    await good.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the connection with the token');
    await until(() => seen.some((e) => e.kind === 'run_started'), 10_000, 'run_started through the token');
    expect(good.raw.join('\n')).not.toContain('s3cret');

    // Origin: the reply inbox, and the Origin header when the sender sets one (a refusal too).
    const ask = async (command: string, origin?: string) => {
      const inbox = createInbox();
      const h = headers();
      if (origin) h.set('Origin', origin);
      const m = await nc.request(`tricaps.token-run.control.${command}`, new TextEncoder().encode('{}'), {
        timeout: 20_000,
        noMux: true,
        reply: inbox,
        headers: origin ? h : undefined,
      });
      return { inbox, reply: JSON.parse(new TextDecoder().decode(m.data)) };
    };
    const pause = await ask('pause', 'ops-console alice@bastion');
    expect(pause.reply).toMatchObject({ ok: true, command: 'pause' });
    expect(
      await good.waitFor((l) => l.msg.startsWith('NATS command pause'), 10_000, 'the pause in the log'),
    ).toMatchObject({
      subject: 'tricaps.token-run.control.pause',
      replyTo: pause.inbox,
      origin: 'ops-console alice@bastion',
    });
    const refused = await ask('launch');
    expect(refused.reply).toMatchObject({ ok: false });
    expect(
      await good.waitFor((l) => l.msg.startsWith('refused NATS command'), 10_000, 'the refusal in the log'),
    ).toMatchObject({ level: 40, subject: 'tricaps.token-run.control.launch', replyTo: refused.inbox, origin: null });
    good.kill();

    const bad = fleet.coordinator([...TINY, '--steps', '100000', '--run-id', 'bad-token-run', '--nats', url], {
      TRICAPS_NATS_TOKEN: 'wrong-token',
    });
    await trainsRefusedByNats(bad);
    expect(bad.raw.join('\n')).not.toContain('wrong-token');
  });

  it('authenticates with --nats-creds (JWT + nkey) to a server in operator mode; unknown creds never stop training', async () => {
    // Operator, account and users as nsc would make them; the server trusts the operator and has the
    // account's JWT preloaded.
    const operator = nkeys.createOperator();
    const account = nkeys.createAccount();
    const stranger = nkeys.createAccount(); // signed by nobody the server trusts
    const unlimited = {
      subs: -1,
      data: -1,
      payload: -1,
      imports: -1,
      exports: -1,
      wildcards: true,
      conn: -1,
      leaf: -1,
    };
    const dir = tempDir();
    const port = await freePort();
    writeFileSync(
      join(dir, 'operator.jwt'),
      natsJwt(operator, operator.getPublicKey(), 'tricaps-op', { type: 'operator' }),
    );
    const accountJwt = natsJwt(operator, account.getPublicKey(), 'tricaps', {
      type: 'account',
      limits: unlimited,
      default_permissions: { pub: {}, sub: {} },
    });
    writeFileSync(
      join(dir, 'server.conf'),
      `operator: ${join(dir, 'operator.jwt')}\nresolver: MEMORY\nresolver_preload: {\n  ${account.getPublicKey()}: ${accountJwt}\n}\n`,
    );
    writeFileSync(join(dir, 'coordinator.creds'), userCreds(account, 'coordinator'));
    writeFileSync(join(dir, 'stranger.creds'), userCreds(stranger, 'stranger'));
    await natsServer(port, ['-c', join(dir, 'server.conf')]);
    const url = `nats://127.0.0.1:${port}`;
    const options: Partial<ConnectionOptions> = {
      authenticator: credsAuthenticator(new TextEncoder().encode(userCreds(account, 'watcher'))),
    };
    const nc = await connect({ servers: url, ...options });
    connections.push(nc);
    const seen = collect(nc, 'creds-run');
    await nc.flush();

    const good = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--run-id',
      'creds-run',
      '--nats',
      url,
      '--nats-creds',
      join(dir, 'coordinator.creds'),
    ]);
    await good.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the connection with the creds');
    const started = await until(
      () => seen.find((e) => e.kind === 'run_started'),
      10_000,
      'run_started in the account of the creds',
    );
    expect(started.body).toMatchObject({ schema: 'tricaps.event/v1', run: 'creds-run' });
    expect(good.raw.join('\n')).not.toMatch(/SUA[A-Z2-7]{50,}/); // the seed is never logged
    good.kill();

    const bad = fleet.coordinator([
      ...TINY,
      '--steps',
      '100000',
      '--run-id',
      'stranger-run',
      '--nats',
      url,
      '--nats-creds',
      join(dir, 'stranger.creds'),
    ]);
    await trainsRefusedByNats(bad);

    const missing = fleet.coordinator([
      ...TINY,
      '--steps',
      '1',
      '--nats',
      url,
      '--nats-creds',
      join(dir, 'none.creds'),
    ]);
    expect((await missing.exited).code).toBe(2);
    expect(missing.raw.join('\n')).toMatch(/--nats-creds \S+none\.creds: ENOENT/);
  });
});

describe('NATS that is never reachable', () => {
  it('is named in the log: once when the first connection does not come, and at the end with what was not delivered', async () => {
    const port = await freePort(); // nothing listens there
    const coord = fleet.coordinator([...TINY, '--steps', '2', '--nats', `nats://127.0.0.1:${port}`]);
    const address = await listeningAddress(coord);
    const warning = await coord.waitFor(
      (l) => /NATS at nats:\/\/127\.0\.0\.1:\d+ is not reachable/.test(l.msg),
      15_000,
      'NATS warning',
    );
    expect(warning.level).toBe(40); // warn
    fleet.worker(address, 'n1');
    const { code } = await coord.exited;
    expect(code, coord.raw.slice(-10).join('\n')).toBe(0);
    expect(coord.steps()).toHaveLength(2);
    const end = coord.lines.find((l) => /was never reachable: \d+ events not delivered/.test(l.msg));
    expect(end, coord.raw.slice(-10).join('\n')).toBeDefined();
    expect(Number(end!.undelivered)).toBeGreaterThan(0);
    // Said once, not per event or per retry.
    expect(coord.lines.filter((l) => /is not reachable/.test(l.msg))).toHaveLength(1);
  });
});

describe('NATS going down under the bridge', () => {
  it('keeps at most 1000 events while NATS is down, drops and counts the rest, sends the kept ones in order once it is back, and says at the end how many never arrived', async () => {
    // A JetStream stream on the server keeps every event that arrives, also while no subscriber is
    // connected; a restarted server restores it (from its store directory) before it takes clients.
    const port = await freePort();
    const store = ['-js', '-sd', tempDir()];
    let server = await natsServer(port, store);
    const url = `nats://127.0.0.1:${port}`;
    const stream = async <T>(use: (jsm: Awaited<ReturnType<NatsConnection['jetstreamManager']>>) => Promise<T>) => {
      const nc = await connect({ servers: url });
      connections.push(nc);
      try {
        return await use(await nc.jetstreamManager());
      } finally {
        await nc.close();
      }
    };
    await stream((jsm) =>
      jsm.streams.add({ name: 'EVENTS', subjects: ['tricaps.buffer-run.events.>'], storage: StorageType.File }),
    );
    const stored = () => stream(async (jsm) => (await jsm.streams.info('EVENTS')).state.messages);

    const lines: LogLine[] = [];
    const log = pino({ level: 'info', base: undefined }, { write: (s: string) => void lines.push(JSON.parse(s)) });
    let counted = 0; // what the coordinator adds to tricaps_nats_events_dropped_total
    const bridge = NatsBridge.start(url, 'buffer-run', new RunControl(), log, () => (counted += 1));
    bridges.push(bridge);
    const logged = (re: RegExp) => lines.filter((l) => re.test(l.msg));
    await until(() => logged(/^connected to NATS/).length, 10_000, 'the bridge connecting');
    bridge.publish('step_summary', { step: 0 });
    await until(async () => (await stored()) === 1, 10_000, 'the event sent while connected');

    await stopServer(server);
    await until(() => logged(/^lost the NATS connection/).length, 10_000, 'the bridge noticing NATS is gone');
    for (let step = 1; step <= 1500; step++) bridge.publish('step_summary', { step });
    expect(bridge.dropped).toBe(500);
    expect(counted).toBe(500);
    expect(logged(/^dropping NATS events/)).toHaveLength(1); // once, not per event

    server = await natsServer(port, store);
    await until(() => logged(/^reconnected to NATS/).length, 15_000, 'the bridge reconnecting');
    await until(async () => (await stored()) >= 1001, 10_000, 'the 1000 kept events in the stream');
    const steps = await stream(async (jsm) => {
      const out: number[] = [];
      const last = (await jsm.streams.info('EVENTS')).state.last_seq;
      for (let seq = 1; seq <= last; seq++)
        out.push((await jsm.streams.getMessage('EVENTS', { seq })).json<{ step: number }>().step);
      return out;
    });
    expect(steps).toEqual(Array.from({ length: 1001 }, (_, i) => i)); // the first 1000 of the outage, in order

    // Down again at the end: what still waits and what was dropped are never delivered, and the log says so.
    await stopServer(server);
    await until(() => logged(/^lost the NATS connection/).length === 2, 10_000, 'the second outage');
    bridge.publish('run_finished', { steps: 1500 });
    await bridge.close();
    const end = logged(/NATS events not delivered/);
    expect(end).toHaveLength(1);
    expect(end[0]).toMatchObject({ level: 40, undelivered: 501, dropped: 500, waiting: 1 });
  });
});
