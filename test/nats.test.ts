// NATS events and control against a real nats-server (Debian package nats-server; .ci/run installs
// it) on a loopback port chosen at run time, with a real coordinator and worker.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from 'nats';
import { Fleet, listeningAddress, TINY } from './fleet-harness.js';

const fleet = new Fleet();
const servers: ChildProcess[] = [];
const connections: NatsConnection[] = [];
const dirs: string[] = [];
afterEach(async () => {
  await Promise.all(connections.splice(0).map((c) => c.close().catch(() => undefined)));
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
    /** tricaps_paused as scraped now (the stalled and checkpoint alerts stay quiet while it is 1). */
    const pausedGauge = async () =>
      Number(
        /^tricaps_paused\{[^}]*\} (\S+)$/m.exec(
          await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text(),
        )?.[1],
      );
    await coord.waitFor((l) => l.msg.startsWith('connected to NATS'), 30_000, 'the NATS connection');
    await coord.waitFor((l) => /^step 4 loss/.test(l.msg), 60_000, 'step 4');
    await nc.flush();
    const kinds = new Set(seen.map((e) => e.kind));
    expect(kinds).toContain('run_started'); // published before the connection, sent once connected
    expect(kinds).toContain('worker_joined');
    expect(kinds).toContain('step_summary');
    const summary = seen.find((e) => e.kind === 'step_summary')!.body;
    expect(summary).toMatchObject({ schema: 'tricaps.event/v1', kind: 'step_summary', run: 'nats-run', step: 2 });

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
    // The reply (NATS) can overtake the last step's log line (stdout pipe): wait for that line, then
    // check that no later step is logged while paused.
    await coord.waitFor(
      (l) => /^step \d+ loss/.test(l.msg) && l.step === paused.step - 1,
      30_000,
      'the step before the pause',
    );
    await new Promise((r) => setTimeout(r, 1500));
    expect(
      coord
        .steps()
        .map((l) => l.step as number)
        .filter((s) => s >= paused.step),
    ).toEqual([]);
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
    await coord.waitFor(
      (l) => /^step \d+ loss/.test(l.msg) && (l.step as number) >= paused.step + 1,
      30_000,
      'steps after resume',
    );

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
