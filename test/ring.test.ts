// The ring exchange on real processes: a coordinator with --exchange ring and workers with
// --peer-listen on loopback ports chosen at run time. Same training as the central exchange (up to
// float32 summation order), a member killed mid-reduction, strangers refused, poisoned hops named.
import { afterEach, describe, expect, it } from 'vitest';
import { ExchangeMeter } from '../src/shared/exchange-meter.js';
import { NOT_READY, PeerClients } from '../src/worker/peer-link.js';
import { Fleet, listeningAddress, TINY, type FleetProcess } from './fleet-harness.js';

const fleet = new Fleet();
afterEach(() => fleet.cleanup());

const PEER = ['--peer-listen', '127.0.0.1:0'];
/** Values of the packed contribution of the TINY model: its parameters and buffers, and 6 scalars. */
const VECTOR = 154_352 + 6;

const job = (steps: number, workers: number, extra: string[] = []) => [
  ...TINY,
  '--steps',
  String(steps),
  '--shards',
  '3',
  '--min-workers',
  String(workers),
  '--seed',
  '5',
  '--heartbeat-interval',
  '200',
  '--heartbeat-timeout',
  '2000',
  ...extra,
];

async function run(
  exchange: 'central' | 'ring',
  names: string[],
  steps: number,
  env: Record<string, Record<string, string>> = {},
  minWorkers = names.length,
): Promise<{ coord: FleetProcess; workers: FleetProcess[] }> {
  const coord = fleet.coordinator(job(steps, minWorkers, ['--exchange', exchange]));
  const address = await listeningAddress(coord);
  const workers = names.map((n) => fleet.worker(address, n, PEER, env[n] ?? {}));
  return { coord, workers };
}

describe('ring exchange (real processes)', () => {
  it('trains like the central exchange (float32 summation order aside) with one gradient up and one model down through the coordinator per step', async () => {
    const central = await run('central', ['a', 'b', 'c'], 5);
    expect((await central.coord.exited).code).toBe(0);
    const ring = await run('ring', ['a', 'b', 'c'], 5);
    expect((await ring.coord.exited).code).toBe(0);
    const c = central.coord.steps();
    const r = ring.coord.steps();
    expect(r.map((l) => l.step)).toEqual([0, 1, 2, 3, 4]);
    for (let i = 0; i < 5; i++) {
      // Stated tolerance: the losses of the same weights agree to 1e-6 relative at step 0 (float32
      // sums in the ring vector); later steps start from weights that differ by summation order.
      const tol = i === 0 ? 1e-6 : 1e-4;
      expect(Math.abs((r[i].loss as number) - (c[i].loss as number)), `step ${i}`).toBeLessThan(
        tol * (c[i].loss as number),
      );
      expect(Math.abs((r[i].grad_norm as number) - (c[i].grad_norm as number))).toBeLessThan(
        (i === 0 ? 1e-6 : 1e-3) * (c[i].grad_norm as number),
      );
      expect(r[i].workers).toBe(3);
      // Central: three whole gradients arrive; ring: one vector in slices, whatever the fleet size.
      expect(c[i].bytes_received).toBe(3 * (VECTOR - 6) * 4);
      expect(r[i].bytes_received).toBe(VECTOR * 4);
      // Weights down: central sends each worker the whole model; ring sends each member one slice
      // (they all-gather the rest), so one model in total (plus message framing, under 1%).
      const weights = (VECTOR - 6) * 4;
      expect(c[i].bytes_sent, `central step ${i}`).toBeGreaterThanOrEqual(3 * weights);
      expect(c[i].bytes_sent).toBeLessThan(3 * weights * 1.01);
      expect(r[i].bytes_sent, `ring step ${i}`).toBeGreaterThanOrEqual(weights);
      expect(r[i].bytes_sent).toBeLessThan(weights * 1.01);
    }
    // The workers moved the ring's hops among themselves.
    for (const w of ring.workers) {
      const over = await w.waitFor((l) => /is over after/.test(l.msg), 10_000, 'the end of the run');
      expect(over.steps).toBe(5);
    }
  });

  it('kill -9 of a member while the ring is in flight: named, the round re-planned, the step recomputed by the survivors, every step once', async () => {
    // b holds its ring for 3 s after its first hop: a reduction is in flight when it dies.
    const { coord, workers } = await run('ring', ['a', 'b', 'c'], 6, { b: { TRICAPS_TEST_RING_HOLD_MS: '3000' } }, 2);
    const b = workers[1];
    // Kill it while it holds a reduction after its first hop (the others wait on it).
    const held = await b.waitFor((l) => /^holding the ring of step \d+/.test(l.msg), 60_000, 'b to hold its ring');
    const killedAt = Date.now();
    b.kill('SIGKILL');
    const lost = await coord.waitFor((l) => /^lost worker \S+ \(b\)/.test(l.msg), 10_000, 'b named lost');
    expect(Date.parse(lost.time as string) - killedAt).toBeLessThan(2000 + 3000);
    expect((await coord.exited).code).toBe(0);
    const steps = coord.steps();
    expect(steps.map((l) => l.step)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const s of steps) expect(s.shards_computed).toBe(3);
    // The step b died in was not applied with its partial ring: it was recomputed by the two survivors.
    const inFlight = steps.find((s) => s.step === held.step)!;
    expect(inFlight.workers).toBe(2);
    expect(inFlight.round as number).toBeGreaterThan(held.round as number);
  });

  it('a member that sends NaN into the ring, or a slice of the wrong length, is named and removed; nothing of it is applied', async () => {
    for (const poison of ['nan', 'shape']) {
      const { coord } = await run('ring', ['a', 'b', 'c'], 3, { b: { TRICAPS_TEST_RING_POISON: poison } }, 2);
      const lost = await coord.waitFor((l) => /^lost worker \S+ \(b\)/.test(l.msg), 60_000, `b (${poison}) removed`);
      expect(lost.msg).toMatch(
        poison === 'nan' ? /sent bad ring data .*non-finite value NaN/ : /sent bad ring data .*slice/,
      );
      expect((await coord.exited).code, poison).toBe(0);
      const steps = coord.steps();
      expect(steps.map((l) => l.step)).toEqual([0, 1, 2]);
      for (const s of steps) {
        expect(Number.isFinite(s.loss as number)).toBe(true);
        expect(s.workers).toBe(2); // b never contributed to an applied step
      }
      await fleet.cleanup();
    }
  });

  it('a process that is not the predecessor in the current round, or of another run, or without the join token, cannot send into the ring', async () => {
    const token = 'ring-test-token-1234';
    const coord = fleet.coordinator(job(1000, 2, ['--exchange', 'ring']), { TRICAPS_JOIN_TOKEN: token });
    const address = await listeningAddress(coord);
    const a = fleet.worker(address, 'a', PEER, { TRICAPS_JOIN_TOKEN: token });
    fleet.worker(address, 'b', PEER, { TRICAPS_JOIN_TOKEN: token });
    const peerLine = await a.waitFor((l) => typeof l.peerAddress === 'string', 60_000, "a's peer address");
    const joined = await a.waitFor((l) => /^joined run/.test(l.msg), 60_000, 'a to join');
    const run = joined.run as string;
    await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 60_000, 'the ring to run');
    // One hop as a stranger would send it; "not ready" (a's ring between two steps) is asked again, so
    // that what is checked is a's verdict on an open ring.
    const sendOnce = async (tokenUsed: string | undefined, header: { runId: string; from: string }) => {
      const clients = new PeerClients({ joinToken: tokenUsed }, new ExchangeMeter());
      try {
        await clients.hop(
          peerLine.peerAddress as string,
          {
            run: { runId: header.runId, round: 1, step: 0 },
            fromWorker: header.from,
            hop: 0,
            slice: { index: 0, offset: 0, length: 4 },
          },
          new Float32Array(4),
          'float32',
          5000,
          new AbortController().signal,
        );
        return 'accepted';
      } catch (err) {
        return (err as { details?: string }).details ?? (err as Error).message;
      } finally {
        clients.close();
      }
    };
    const send = async (tokenUsed: string | undefined, header: { runId: string; from: string }) => {
      for (let tries = 0; ; tries++) {
        const verdict = await sendOnce(tokenUsed, header);
        if (verdict !== NOT_READY || tries >= 200) return verdict;
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    expect(await send(undefined, { runId: run, from: 'w9-0000' })).toMatch(/join token/i);
    expect(await send(token, { runId: 'another-run', from: 'w9-0000' })).toBe(
      `w9-0000 sent a hop of run another-run; this ring belongs to run ${run}`,
    );
    expect(await send(token, { runId: run, from: 'w9-0000' })).toMatch(
      /^w9-0000 is not this member's predecessor in round \d+ \(w\d+-\w+ is\)$/,
    );
    // The run is not disturbed by any of it.
    const before = coord.steps().length;
    await coord.waitFor((l) => /^step \d+ loss/.test(l.msg) && (l.step as number) >= before + 2, 60_000, 'more steps');
  });
});
