// The fault-injection soak in every `make test`: `tricaps bench chaos` drives a real coordinator and
// three workers through a seeded schedule of every fault kind (kill -9 and SIGSTOP/SIGCONT of
// workers, kill -9 and --resume of the coordinator, a full checkpoint disk, a late join), and a
// schedule of coordinator-side faults only, whose final weights must equal the uninterrupted run's
// bit for bit, and the ring exchange under every fault kind. The mixed schedule's seed is new each run (TRICAPS_CHAOS_SEED replays one); a failure
// prints it with the command that replays it. A longer soak: `tricaps bench chaos --schedules 20`.
import { describe, expect, it } from 'vitest';
import { FAULT_KINDS } from '../src/bench/chaos-schedule.js';
import { lastJsonLine, tricaps } from './cli-runner.js';

const seed = process.env.TRICAPS_CHAOS_SEED ?? String(Math.floor(Math.random() * 1_000_000));

interface Report {
  ok: boolean;
  schedules: {
    seed: number;
    ok: boolean;
    violations: string[];
    replay: string;
    faults: { kind: string; named?: string; recovered?: string }[];
    notRun: Record<string, string>;
    coordinators: unknown[];
    weights?: { identical: boolean; identityExpected: boolean };
  }[];
}

async function soak(...args: string[]): Promise<Report['schedules'][number]> {
  const r = await tricaps('bench', 'chaos', '--heartbeat-timeout', '3000', ...args);
  const report = lastJsonLine(r.stdout) as Report;
  const s = report.schedules[0];
  // The seed and the replay command come first in any failure message.
  expect(s.violations, `seed ${s.seed}; replay: ${s.replay}\n${r.stderr.slice(-3000)}`).toEqual([]);
  expect(r.code).toBe(0);
  return s;
}

describe('fault-injection soak (real processes)', () => {
  it(`every fault kind in one seeded schedule (seed ${seed}): each named, each step applied once with all its shards, the run completes`, async () => {
    const s = await soak('--seed', seed, '--faults', String(FAULT_KINDS.length + 1));
    const injected = new Set(s.faults.map((f) => f.kind));
    for (const kind of FAULT_KINDS) expect(injected.has(kind) || kind in s.notRun, kind).toBe(true);
    // Every fault that makes the coordinator act is named in its log, and recovered from.
    for (const f of s.faults.filter((x) => x.kind !== 'worker-pause')) expect(f.named, f.kind).toBeTruthy();
    for (const f of s.faults.filter((x) => x.kind !== 'late-join')) expect(f.recovered, f.kind).toBeTruthy();
    expect(s.coordinators.length).toBeGreaterThanOrEqual(2); // at least one restart
    expect(s.weights).toBeDefined();
  });

  it('coordinator restarts, a full disk and pauses: the final weights and optimizer state equal the uninterrupted run, bit for bit', async () => {
    const s = await soak(
      '--seed',
      String(Number(seed) + 1),
      '--kinds',
      'coordinator-restart,disk-full,worker-pause',
      '--faults',
      '4',
    );
    expect(s.coordinators.length).toBeGreaterThanOrEqual(2);
    expect(s.weights).toMatchObject({ identityExpected: true, identical: true });
  });

  it('the ring exchange under every fault kind: members lost, frozen and joining mid-reduction, coordinator restarts; each step once, all shards', async () => {
    const s = await soak(
      '--seed',
      String(Number(seed) + 2),
      '--exchange',
      'ring',
      '--faults',
      String(FAULT_KINDS.length),
    );
    expect(new Set(s.faults.map((f) => f.kind)).size + Object.keys(s.notRun).length).toBe(FAULT_KINDS.length);
    expect(s.replay).toMatch(/--exchange ring$/);
  });
});
