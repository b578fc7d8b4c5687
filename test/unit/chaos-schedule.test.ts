// The soak's pure parts: schedules (seeded, covering every kind asked for) and the invariants it
// checks on coordinator step lines (each step once with all shards; replays reproduce their loss).
import { describe, expect, it } from 'vitest';
import {
  FAULT_KINDS,
  compress,
  firstRegrouping,
  float32Difference,
  lineageOf,
  planSchedule,
  replayMismatches,
  type Incarnation,
  type StepLine,
} from '../../src/bench/chaos-schedule.js';
import { UsageError } from '../../src/shared/errors.js';

const options = { kinds: FAULT_KINDS, faults: 9, workers: ['a', 'b', 'c'], heartbeatTimeoutMs: 2000, stepMs: 300 };
const line = (step: number, groups: number[][] = [[0, 1], [2], [3]], loss = 1 + step / 100): StepLine => ({
  step,
  loss,
  shards: 4,
  shardsComputed: groups.flat().length,
  shardGroups: groups,
});
const run = (startStep: number, from: number, to: number): Incarnation => ({
  startStep,
  steps: Array.from({ length: to - from + 1 }, (_, i) => line(from + i)),
});

describe('fault schedules', () => {
  it('are a function of the seed, cover every kind asked for, and leave the last steps quiet', () => {
    const a = planSchedule(11, options);
    expect(planSchedule(11, options)).toEqual(a);
    expect(planSchedule(12, options)).not.toEqual(a);
    for (let seed = 0; seed < 50; seed++) {
      const s = planSchedule(seed, options);
      expect(s.faults).toHaveLength(9);
      expect(new Set(s.faults.map((f) => f.kind))).toEqual(new Set(FAULT_KINDS));
      expect(s.faults[0].kind).toBe('late-join');
      expect(s.faults.filter((f) => f.kind === 'late-join')).toHaveLength(1);
      // Strictly increasing steps, every worker fault names a worker, the run outlasts the last one.
      s.faults.forEach((f, i) => {
        if (i > 0) expect(f.atStep).toBeGreaterThan(s.faults[i - 1].atStep);
        expect(f.worker === undefined).toBe(f.kind === 'coordinator-restart' || f.kind === 'disk-full');
        expect(f.phaseMs).toBeGreaterThanOrEqual(0);
        expect(f.phaseMs).toBeLessThanOrEqual(300);
      });
      expect(s.steps).toBeGreaterThanOrEqual(s.faults.at(-1)!.atStep + 6);
      // A freeze outlasts the heartbeat timeout, a pause stays well inside it.
      for (const f of s.faults.filter((x) => x.kind === 'worker-freeze')) expect(f.holdMs).toBeGreaterThan(3000);
      for (const f of s.faults.filter((x) => x.kind === 'worker-pause')) expect(f.holdMs).toBeLessThan(500);
    }
  });

  it('refuses fewer faults than kinds, naming the fix', () => {
    expect(() => planSchedule(1, { ...options, faults: 3 })).toThrow(UsageError);
    expect(() => planSchedule(1, { ...options, faults: 3 })).toThrow(/--faults 3 cannot cover the 6 kinds.*at least 6/);
  });
});

describe('soak invariants', () => {
  it('a run restarted from checkpoints: the final lineage is each step once, with all shards', () => {
    // Killed after step 9 with a checkpoint at 8; then after 14 with a checkpoint at 14.
    const { lineage, violations } = lineageOf([run(0, 0, 9), run(8, 8, 14), run(14, 14, 19)], 20);
    expect(violations).toEqual([]);
    expect(lineage.map((s) => s.step)).toEqual([...Array(20).keys()]);
  });

  it('names a step applied twice, a step skipped, a missing shard and a resume past what was applied', () => {
    const twice = run(0, 0, 9);
    twice.steps.splice(5, 0, line(4));
    expect(lineageOf([twice], 10).violations).toEqual(
      expect.arrayContaining([expect.stringMatching(/coordinator 1 logged step 4 where step 5 was due/)]),
    );
    const skipped = run(0, 0, 9);
    skipped.steps.splice(3, 1);
    expect(lineageOf([skipped], 10).violations.join('\n')).toMatch(/went through steps \[0-2,4-9\], not 0\.\.9/);
    const partial = run(0, 0, 9);
    partial.steps[6] = line(6, [[0, 1], [3]]);
    expect(lineageOf([partial], 10).violations).toEqual(['step 6 was applied with shards [0,1,3] (3 computed) of 4']);
    expect(lineageOf([run(0, 0, 5), run(8, 8, 9)], 10).violations).toEqual(
      expect.arrayContaining([
        'coordinator 2 resumed at step 8, but coordinator 1 only applied steps up to 5',
        expect.stringMatching(/went through steps \[0-5,8-9\]/),
      ]),
    );
  });

  it('a step replayed from a checkpoint must reproduce its loss: exactly when grouped alike', () => {
    const first = run(0, 0, 9);
    const second = run(8, 8, 12);
    expect(replayMismatches([first, second])).toEqual([]);
    second.steps[1] = line(9, undefined, first.steps[9].loss + 1e-12);
    expect(replayMismatches([first, second])).toEqual([
      expect.stringMatching(/^step 9 replayed by coordinator 2 .* with the same shard grouping$/),
    ]);
    // Grouped differently: summation order may move the last bits, not more.
    second.steps[1] = line(
      9,
      [
        [0, 1],
        [2, 3],
      ],
      first.steps[9].loss * (1 + 1e-8),
    );
    expect(replayMismatches([first, second])).toEqual([]);
    second.steps[1] = line(
      9,
      [
        [0, 1],
        [2, 3],
      ],
      first.steps[9].loss * (1 + 1e-4),
    );
    expect(replayMismatches([first, second])).toHaveLength(1);
  });

  it('finds the first step grouped unlike the reference, and compares float32 files', () => {
    const reference = run(0, 0, 9).steps;
    expect(firstRegrouping(run(0, 0, 9).steps, reference)).toBe(-1);
    const lineage = run(0, 0, 9).steps;
    lineage[3] = line(3, [
      [0, 1],
      [2, 3],
    ]);
    expect(firstRegrouping(lineage, reference)).toBe(3);
    const a = new Uint8Array(new Float32Array([1, -2, 3]).buffer);
    const b = new Uint8Array(new Float32Array([1, -2.5, 3]).buffer);
    expect(float32Difference(a, b)).toEqual({ maxAbsDiff: 0.5, maxAbs: 3 });
    expect(float32Difference(a, new Uint8Array(new Float32Array([1, NaN, 3]).buffer)).maxAbsDiff).toBeNaN();
    expect(() => float32Difference(a, new Uint8Array(8))).toThrow(/12 and 8 bytes/);
    expect(compress([0, 1, 2, 5, 7, 8])).toBe('0-2,5,7-8');
  });
});
