// The fleet's logic without a network: shard planning, assignments and re-planning, membership,
// the coordinator's long poll and liveness sweeps, the worker's multi-shard gradient, the
// hard-negative grouping.
import { describe, expect, it } from 'vitest';
import '@tensorflow/tfjs';
import { pino } from 'pino';
import { assignShards, planShards } from '../../src/shared/plan/step-plan.js';
import { planStep } from '../../src/coordinator/step.js';
import { samplePkBatch } from '../../src/shared/data/pk-sampler.js';
import { StepWork } from '../../src/coordinator/step-work.js';
import { Membership, FleetFullError, describeMember } from '../../src/coordinator/membership.js';
import {
  FleetCoordinator,
  FleetError,
  type TrainResult,
  type WeightSource,
} from '../../src/coordinator/fleet-coordinator.js';
import { confusableAffinity, meanWithinShardDistance } from '../../src/shared/plan/hard-negatives.js';
import { weightedAverage, meanOf } from '../../src/shared/plan/average.js';
import { computeShardsGradient } from '../../src/shared/train/shard-gradients.js';
import { assertSameCatalogue } from '../../src/worker/worker.js';
import { syntheticCatalogue } from '../../src/shared/data/synthetic.js';
import { trainItems } from '../../src/shared/data/catalogue.js';
import { fastGradConv } from '../../src/shared/engine/engine.js';
import { AugmentConfigSchema } from '../../src/shared/data/augment.js';
import { buildArchitecture } from '../../src/shared/model/architecture.js';
import { modelConfig } from '../../src/shared/model/config.js';
import { createModelState } from '../../src/shared/model/params.js';
import { relativeError, useBackend } from '../helpers.js';

const silent = pino({ level: 'silent' });
const items = new Map<number, number[]>(
  Array.from({ length: 30 }, (_, i) => [i, [i * 10, i * 10 + 1, i * 10 + 2, i * 10 + 3]]),
);
const batch = samplePkBatch({ seed: 3, epoch: 0, step: 1, itemsPerBatch: 8, imagesPerItem: 3, items });

describe('shard plan', () => {
  it('splits a batch into a fixed number of whole-item shards, each with at least 2 items', () => {
    for (const n of [1, 2, 3, 4]) {
      const shards = planShards(batch, n);
      expect(shards.map((s) => s.index)).toEqual([...Array(n).keys()]);
      expect(shards.flatMap((s) => s.imageIds).sort()).toEqual([...batch.imageIds].sort());
      for (const s of shards) expect(new Set(s.itemIds).size).toBeGreaterThanOrEqual(2);
      const owner = new Map<number, number>();
      shards.forEach((s) =>
        s.itemIds.forEach((item) => expect(owner.get(item) ?? s.index).toBe(s.index) && owner.set(item, s.index)),
      );
    }
    expect(planShards(batch, 2)).toEqual(planShards(batch, 2));
    expect(() => planShards(batch, 5)).toThrow(/8 items cannot fill 5 shards with at least 2 items each/);
    expect(() => planShards(batch, 0)).toThrow(/0 shards/);
  });

  it('deals shard indexes to workers in contiguous runs that differ by at most one', () => {
    expect([...assignShards([0, 1, 2, 3, 4], ['a', 'b'])]).toEqual([
      ['a', [0, 1, 2]],
      ['b', [3, 4]],
    ]);
    expect([...assignShards([2], ['a', 'b', 'c'])]).toEqual([['a', [2]]]);
    expect(() => assignShards([0], [])).toThrow(/no workers/);
  });
});

describe('step work', () => {
  const shards = planShards(batch, 3);

  it('hands out assignments, accepts each once, and re-plans what a lost worker held', () => {
    const work = new StepWork<string>('train', 7, 0, shards);
    work.plan(['a', 'b'], 4);
    const a = work.take('a', 0)!;
    const b = work.take('b', 0)!;
    expect(a.units).toEqual([0, 1]);
    expect(b.units).toEqual([2]);
    expect(work.take('a', 5)).toBe(a); // asking again returns the same assignment
    expect(work.accept('a', { step: 7, round: 4, units: [0, 1] }, 'ga')).toEqual({ ok: true });
    expect(work.accept('a', { step: 7, round: 4, units: [0, 1] }, 'again')).toEqual({
      ok: false,
      reason: 'no train assignment is outstanding for a at step 7',
    });
    expect(work.finished).toBe(false);
    expect(work.revoke('b')).toEqual([2]);
    expect(work.unplannedUnits).toEqual([2]);
    work.plan(['a'], 5);
    const again = work.take('a', 10)!;
    expect(again).toMatchObject({ round: 5, units: [2] });
    expect(work.check('a', { step: 7, round: 4, units: [2] })).toEqual({
      ok: false,
      reason: 'result for round 4, the assignment is of round 5',
    });
    expect(work.check('a', { step: 6, round: 5, units: [2] })).toEqual({
      ok: false,
      reason: 'result for step 6, the run is at step 7',
    });
    expect(work.check('a', { step: 7, round: 5, units: [1] })).toEqual({
      ok: false,
      reason: 'result for shards [1], the assignment is shards [2]',
    });
    expect(work.overdue(1000, 500)).toEqual(['a']);
    work.accept('a', { step: 7, round: 5, units: [2] }, 'gb');
    expect(work.finished).toBe(true);
    expect(work.results.map((r) => r.result)).toEqual(['ga', 'gb']);
  });
});

describe('step work: rings, holders, deadlines', () => {
  const units = planShards(batch, 4);

  it('plans nothing without workers, and re-plans returned units in shard order', () => {
    const work = new StepWork<string>('train', 1, 0, units);
    work.plan([], 1);
    expect(work.unplannedUnits).toEqual([0, 1, 2, 3]);
    work.plan(['a', 'b'], 1);
    expect(work.unplannedUnits).toEqual([]);
    work.plan(['c'], 1); // nothing left to plan: c gets nothing
    expect(work.holds('c')).toBe(false);
    expect(work.take('b', 0)?.units).toEqual([2, 3]);
    expect(work.take('a', 0)?.units).toEqual([0, 1]);
    expect(work.revoke('b')).toEqual([2, 3]);
    expect(work.revoke('a')).toEqual([0, 1]);
    expect(work.unplannedUnits).toEqual([0, 1, 2, 3]);
  });

  it('a result must name exactly the assigned shards, in order', () => {
    const work = new StepWork<string>('embed', 1, 0, units);
    work.plan(['a', 'b'], 3);
    work.take('a', 0);
    for (const wrong of [[0], [0, 2], [1, 0], [0, 1, 2]])
      expect(work.check('a', { step: 1, round: 3, units: wrong })).toEqual({
        ok: false,
        reason: `result for shards [${wrong}], the assignment is shards [0,1]`,
      });
    expect(work.check('b', { step: 1, round: 3, units: [2, 3] })).toEqual({
      ok: false,
      reason: 'no embed assignment is outstanding for b at step 1',
    });
    expect(work.check('a', { step: 1, round: 3, units: [0, 1] })).toEqual({ ok: true });
  });

  it('knows who holds work, queued or in flight, and which round each holds', () => {
    const work = new StepWork<string>('train', 1, 0, units);
    work.plan(['a', 'b', 'c'], 2);
    expect(work.holdersOf(2)).toEqual(['a', 'b', 'c']);
    expect(work.holdersOf(1)).toEqual([]);
    expect(work.holds('a')).toBe(true); // queued, not yet taken
    expect(work.holds('z')).toBe(false);
    work.take('c', 0);
    expect(work.holdersOf(2)).toEqual(['c', 'a', 'b']); // in flight first, then queued
    expect(work.revoke('a')).toEqual([0, 1]);
    expect(work.holds('a')).toBe(false);
    work.plan(['b'], 3);
    expect(work.holdersOf(2)).toEqual(['c', 'b']);
    expect(work.holdersOf(3)).toEqual(['b']);
    work.take('b', 0); // its round-2 assignment; round 3 stays queued
    expect(work.holdersOf(3)).toEqual(['b']);
    expect(work.accept('b', { step: 1, round: 2, units: [2] }, 'r2')).toEqual({ ok: true });
    expect(work.holds('b')).toBe(true);
    expect(work.accept('c', { step: 1, round: 2, units: [3] }, 'r3')).toEqual({ ok: true });
    expect(work.holds('c')).toBe(false);
  });

  it("accepts a ring's one result only when every member holds an assignment of that round", () => {
    const work = new StepWork<string>('train', 1, 0, units);
    work.plan(['a', 'b', 'c'], 4);
    work.take('a', 0);
    work.take('c', 0);
    expect(work.acceptRing(['c', 'a', 'b'], 4, 'x')).toEqual({ ok: false, reason: 'b holds no assignment of round 4' });
    work.take('b', 0);
    expect(work.acceptRing(['c', 'a', 'b'], 5, 'x')).toEqual({ ok: false, reason: 'c holds no assignment of round 5' });
    expect(work.finished).toBe(false);
    expect(work.acceptRing(['c', 'a', 'b'], 4, 'sum')).toEqual({ ok: true });
    expect(work.results).toEqual([
      { workerId: 'c,a,b', units: [0, 1, 2, 3], result: 'sum', members: ['c', 'a', 'b'], groups: [[3], [0, 1], [2]] },
    ]);
    expect(work.finished).toBe(true);
    expect(work.holdersOf(4)).toEqual([]);
  });

  it('an assignment is overdue only after the deadline has passed, counted from when it was taken', () => {
    const work = new StepWork<string>('train', 1, 0, units);
    work.plan(['a', 'b'], 1);
    work.take('a', 100);
    work.take('b', 300);
    expect(work.overdue(600, 500)).toEqual([]);
    expect(work.overdue(601, 500)).toEqual(['a']);
    expect(work.overdue(801, 500)).toEqual(['a', 'b']);
    expect(work.unitsInFlight('b')).toEqual([2, 3]);
  });
});

describe('membership', () => {
  it('names a member by id, with its chosen name when it has another', () => {
    expect(describeMember({ id: 'w2', name: 'gpu-box-3' })).toBe('w2 (gpu-box-3)');
    expect(describeMember({ id: 'w2', name: 'w2' })).toBe('w2');
    expect(describeMember({ id: 'w2', name: '' })).toBe('w2');
  });

  it('a member is silent only once the timeout has passed', () => {
    const m = new Membership(4);
    const a = m.register('x', 'wasm', 'cpu', 0);
    m.touch(a.id, 1000);
    expect(m.silent(1500, 500)).toEqual([]);
    expect(m.silent(1501, 500).map((x) => x.id)).toEqual([a.id]);
  });

  it('opens a round per change, refuses beyond --max-workers, finds the silent', () => {
    const m = new Membership(2);
    const a = m.register('x', 'wasm', 'cpu', 0);
    m.register('y', 'wasm', 'cpu', 0);
    expect(m.round).toBe(2);
    expect(() => m.register('z', 'wasm', 'cpu', 0)).toThrow(FleetFullError);
    m.touch(a.id, 900);
    expect(m.silent(1000, 500).map((x) => x.name)).toEqual(['y']);
    expect(m.remove('w2', 'gone')?.reason).toBe('gone');
    expect(m.round).toBe(3);
    expect(m.departureOf('w2')).toBe('gone');
    expect(m.remove('w2', 'again')).toBeUndefined();
  });
});

describe('fleet coordinator (no transport)', () => {
  const weights: WeightSource = {
    version: 0,
    chunks: () => [],
    flat: () => new Float32Array(2),
    gradientSpecs: [{ name: 'g', shape: [2] }],
    statSpecs: [],
  };
  const make = (over: Partial<ConstructorParameters<typeof FleetCoordinator>[0]> = {}) =>
    new FleetCoordinator(
      {
        runId: 'r1',
        minWorkers: 1,
        maxWorkers: 4,
        heartbeatIntervalMs: 50,
        heartbeatTimeoutMs: 300,
        assignmentTimeoutMs: 10_000,
        longPollMs: 200,
        gradientDtype: 'float32',
        configJson: '{}',
        ...over,
      },
      weights,
      silent,
    );
  const run = { runId: 'r1', round: 0, step: 0 };
  const result = (): TrainResult => ({
    triplets: 3,
    activeTriplets: 1,
    loss: 1,
    shards: 1,
    grads: new Map([['g', new Float32Array(2)]]),
    bnStats: new Map(),
    dataSeconds: 0,
    computeSeconds: 0,
    meanPositiveDistance: 0,
    meanNegativeDistance: 0,
  });

  it('hands a ring member a slice of the weights vector, and refuses one outside it', () => {
    const c = make();
    const { member } = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' });
    const r = c.runId ? { ...run, runId: c.runId } : run;
    expect(c.weightSlice(member.id, r, 1, 1)).toEqual({ version: 0, values: new Float32Array(1) });
    expect(() => c.weightSlice(member.id, r, 1, 2)).toThrow(
      /weights slice \[1, \+2\) is outside the 2 weights of this run \(different model configuration\?\)/,
    );
    expect(() => c.weightSlice(member.id, r, -1, 1)).toThrow(/outside/);
    expect(() => c.weightSlice('w9-nobody', r, 0, 1)).toThrow(FleetError);
  });

  it('answers WAIT when there is no work, then the assignment, and completes the step', async () => {
    const c = make();
    const { member } = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' });
    expect((await c.nextStep(member.id, run)).action).toBe('wait');
    const work = new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2));
    const executing = c.execute(work);
    executing.catch(() => undefined); // close() in a failing test must not leave an unhandled rejection
    const answer = await c.nextStep(member.id, run);
    expect(answer.action).toBe('train');
    if (answer.action !== 'train') return;
    expect(answer.shards.map((s) => s.index)).toEqual([0, 1]);
    expect(() => c.acceptTrain(member.id, { ...answer.run, round: answer.run.round + 1 }, [0, 1], 0, result())).toThrow(
      FleetError,
    );
    expect(() => c.acceptTrain(member.id, answer.run, [0, 1], 3, result())).toThrow(
      /weights version 3, the current version is 0/,
    );
    c.acceptTrain(member.id, answer.run, [0, 1], 0, result());
    await executing;
    expect(work.results).toHaveLength(1);
    c.close();
  });

  it.each([
    ['an outlying gradient norm', 10, 1, /gradient norm 14\.14 is more than 3 times the recent median 1\.414/, 'norm'],
    ['a non-finite loss', 1, Number.NaN, /loss is NaN/, 'non-finite'],
  ] as const)(
    'refuses %s as unusable: the member is removed, its arrays go back to the pool',
    async (_what, value, loss, message, kind) => {
      const rejected: string[] = [];
      const c = make({ maxGradientNormRatio: 3, listener: { rejected: (m, k) => rejected.push(`${m.id} ${k}`) } });
      const withGrad = (v: number, l = 1): TrainResult => ({
        ...result(),
        loss: l,
        grads: new Map([['g', Float32Array.of(v, v)]]),
      });
      const released: Float32Array[] = [];
      const release = c.buffers.release.bind(c.buffers);
      c.buffers.release = (arrays) => {
        released.push(...arrays);
        release(arrays);
      };
      // Five accepted steps (norm sqrt(2)) build the guard's median; the sixth result is the bad one.
      for (let step = 0; step < 6; step++) {
        const { member } = c.register({ workerName: `w${step}`, engine: 'cpu', device: 'cpu', runId: '' });
        const work = new StepWork<TrainResult>('train', step, 0, planShards(batch, 1));
        const executing = c.execute(work);
        executing.catch(() => undefined);
        const answer = await c.nextStep(member.id, { runId: 'r1', round: c.membership.round, step });
        if (answer.action !== 'train') throw new Error('expected an assignment');
        if (step < 5) {
          c.acceptTrain(member.id, answer.run, [0], 0, withGrad(1));
          await executing;
          c.leave(member.id, answer.run, 'done');
          continue;
        }
        const bad = withGrad(value, loss);
        let err: unknown;
        try {
          c.acceptTrain(member.id, answer.run, [0], 0, bad);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(FleetError);
        expect((err as FleetError).code).toBe('unusable');
        expect((err as FleetError).message).toMatch(message);
        expect(released).toContain(bad.grads.get('g'));
        expect(() => c.heartbeat(member.id, answer.run)).toThrow(/removed: sent an unusable result/);
        c.close();
        await executing.catch(() => undefined);
      }
      expect(rejected).toEqual([`w6 ${kind}`]);
    },
  );

  it('drops a silent worker, names it, and re-plans its shards over the others', async () => {
    const c = make();
    c.start();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const work = new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2));
    const executing = c.execute(work);
    executing.catch(() => undefined); // close() in a failing test must not leave an unhandled rejection
    const ta = await c.nextStep(a.id, run);
    await c.nextStep(b.id, run); // b takes shard 1, then goes silent
    // a keeps beating; b does not.
    const beat = setInterval(() => c.heartbeat(a.id, run), 50);
    try {
      if (ta.action !== 'train') throw new Error('expected an assignment');
      c.acceptTrain(a.id, ta.run, [0], 0, result());
      let tb = await c.nextStep(a.id, run); // WAIT until b is dropped and shard 1 re-planned to a
      while (tb.action === 'wait') tb = await c.nextStep(a.id, run);
      expect(tb.action).toBe('train');
      if (tb.action !== 'train') return;
      expect(tb.shards.map((s) => s.index)).toEqual([1]);
      expect(c.lost).toEqual([
        expect.objectContaining({
          id: b.id,
          name: 'b',
          reason: expect.stringMatching(/^no heartbeat for \d\.\d s \(limit 0\.3 s\)$/),
        }),
      ]);
      expect(() => c.heartbeat(b.id, run)).toThrow(/worker w2 is not a member of run r1 \(removed: no heartbeat/);
      c.acceptTrain(a.id, tb.run, [1], 0, result());
      await executing;
      expect(work.results.map((r) => r.units)).toEqual([[0], [1]]);
    } finally {
      clearInterval(beat);
      c.close();
    }
  });

  /** Runs steps with one worker taking every shard, each result's gradient `g` (a step per value). */
  async function stepWith(c: FleetCoordinator, worker: string, step: number, g: number[]): Promise<void> {
    const work = new StepWork<TrainResult>('train', step, 0, planShards(batch, 2));
    const executing = c.execute(work);
    executing.catch(() => undefined);
    const a = await c.nextStep(worker, { ...run, step });
    if (a.action !== 'train') throw new Error(`step ${step}: ${a.action}, not an assignment`);
    c.acceptTrain(worker, a.run, [0, 1], 0, { ...result(), grads: new Map([['g', Float32Array.from(g)]]) });
    await executing;
  }

  it('the gradient-norm guard refuses an outlier after five accepted norms, names the worker and removes it', async () => {
    const rejected: string[] = [];
    const c = make({
      maxGradientNormRatio: 10,
      listener: { rejected: (m, kind, reason) => rejected.push(`${m.name} ${kind}: ${reason}`) },
    });
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    // Before five norms are known nothing is judged: a large first gradient passes.
    await stepWith(c, a.id, 0, [300, 400]);
    for (let step = 1; step < 5; step++) await stepWith(c, a.id, step, [3, 4]); // norm 5
    const work = new StepWork<TrainResult>('train', 5, 0, planShards(batch, 2));
    c.execute(work).catch(() => undefined);
    const next = await c.nextStep(a.id, { ...run, step: 5 });
    if (next.action !== 'train') throw new Error('expected an assignment');
    // The median of (500, 5, 5, 5, 5) is 5: 10 x 5 = 50 is the limit; 60 is refused, 49 would not be.
    expect(() =>
      c.acceptTrain(a.id, next.run, [0, 1], 0, { ...result(), grads: new Map([['g', Float32Array.of(36, 48)]]) }),
    ).toThrow(/gradient norm 60\.00 is more than 10 times the recent median 5\.000/);
    expect(rejected).toEqual([expect.stringMatching(/^a norm: gradient norm 60\.00/)]);
    expect(c.lost).toEqual([expect.objectContaining({ id: a.id, reason: expect.stringMatching(/unusable result/) })]);
    c.close();
  });

  it('the norm guard judges nothing below five norms, counts no zero gradient, is off at ratio 0, and forgets all but the last 50', async () => {
    const guarded = (ratio: number) => {
      const c = make({ maxGradientNormRatio: ratio });
      return { c, a: c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member.id };
    };
    // Four norms known: an outlier still passes.
    let { c, a } = guarded(10);
    for (let step = 0; step < 4; step++) await stepWith(c, a, step, [3, 4]);
    await stepWith(c, a, 4, [3000, 4000]);
    expect(c.lost).toEqual([]);
    c.close();
    // Zero gradients (no active triplet) say nothing of the scale: five of them and one real norm
    // leave one norm known, so the next one is not judged against a median of zero.
    ({ c, a } = guarded(10));
    for (let step = 0; step < 5; step++) await stepWith(c, a, step, [0, 0]);
    for (let step = 5; step < 9; step++) await stepWith(c, a, step, [3, 4]);
    expect(c.lost).toEqual([]);
    c.close();
    // Ratio 0: the guard is off, whatever the history.
    ({ c, a } = guarded(0));
    for (let step = 0; step < 6; step++) await stepWith(c, a, step, [3, 4]);
    await stepWith(c, a, 6, [3e6, 4e6]);
    expect(c.lost).toEqual([]);
    c.close();
    // The median is of the last 50 accepted norms: 40 of 500, then 30 of 5 leave 20 x 500 and
    // 30 x 5 in the window (median 5), so 60 is refused; over all 70 the median would be 500.
    ({ c, a } = guarded(10));
    for (let step = 0; step < 40; step++) await stepWith(c, a, step, [300, 400]);
    for (let step = 40; step < 70; step++) await stepWith(c, a, step, [3, 4]);
    const work = new StepWork<TrainResult>('train', 70, 0, planShards(batch, 2));
    c.execute(work).catch(() => undefined);
    const next = await c.nextStep(a, { ...run, step: 70 });
    if (next.action !== 'train') throw new Error('expected an assignment');
    expect(() =>
      c.acceptTrain(a, next.run, [0, 1], 0, { ...result(), grads: new Map([['g', Float32Array.of(36, 48)]]) }),
    ).toThrow(/gradient norm 60\.00 is more than 10 times the recent median 5\.000/);
    c.close();
  });

  it('removes a worker that keeps beating but returns no result within --step-timeout (stalled)', async () => {
    const lost: string[] = [];
    const c = make({
      assignmentTimeoutMs: 400,
      heartbeatTimeoutMs: 10_000,
      listener: { lost: (m, kind, reason) => lost.push(`${m.name} ${kind}: ${reason}`) },
    });
    c.start();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const work = new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2));
    c.execute(work).catch(() => undefined);
    const ta = await c.nextStep(a.id, run);
    await c.nextStep(b.id, run); // b takes shard 1 and never answers, though it keeps beating
    const beat = setInterval(() => {
      c.heartbeat(a.id, run);
      if (c.membership.get(b.id)) c.heartbeat(b.id, run);
    }, 50);
    try {
      if (ta.action !== 'train') throw new Error('expected an assignment');
      c.acceptTrain(a.id, ta.run, [0], 0, result());
      let tb = await c.nextStep(a.id, run);
      while (tb.action === 'wait') tb = await c.nextStep(a.id, run);
      expect(tb.action === 'train' && tb.shards.map((sh) => sh.index)).toEqual([1]);
      expect(lost).toEqual([expect.stringMatching(/^b stalled: stalled: no result for step 0 within 0\.4 s/)]);
    } finally {
      clearInterval(beat);
      c.close();
    }
  });

  it('hands out no work below --min-workers, and all of it once enough have joined', async () => {
    const c = make({ minWorkers: 2 });
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const work = new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2));
    c.execute(work).catch(() => undefined);
    expect((await c.nextStep(a.id, run)).action).toBe('wait'); // one of two: paused
    expect((await c.nextStep(a.id, run)).action).toBe('wait');
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const [ta, tb] = [await c.nextStep(a.id, run), await c.nextStep(b.id, run)];
    expect([ta, tb].map((x) => (x.action === 'train' ? x.shards.map((sh) => sh.index) : x.action))).toEqual([[0], [1]]);
    c.close();
  });

  it('says it is paused below --min-workers when the count changes and every 10 s, at info before the run has lost anyone, and when it resumes', async () => {
    let t = 0;
    let clockReads = 0;
    const now = () => (clockReads++, t);
    const logged: { level: number; msg: string; pausedSeconds?: number; workers?: number }[] = [];
    const log = pino({ level: 'info' }, { write: (l: string) => logged.push(JSON.parse(l)) });
    const c = new FleetCoordinator(
      {
        runId: 'r1',
        minWorkers: 2,
        maxWorkers: 4,
        heartbeatIntervalMs: 50,
        heartbeatTimeoutMs: 60_000,
        assignmentTimeoutMs: 60_000,
        longPollMs: 100,
        gradientDtype: 'float32',
        configJson: '{}',
        now,
      },
      weights,
      log,
    );
    const pauses = () => logged.filter((l) => /^(paused|resumed)/.test(l.msg));
    /** Lets the execute loop go round once more (it reads the clock each time it looks at the fleet). */
    const aRound = async () => {
      const before = clockReads;
      const until = Date.now() + 5000;
      while (clockReads === before && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
      expect(clockReads, 'the execute loop did not go round within 5 s').toBeGreaterThan(before);
    };
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    c.execute(new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2))).catch(() => undefined);
    await aRound();
    expect(pauses()).toEqual([
      expect.objectContaining({
        level: 30,
        msg: 'paused at step 0: 1 of --min-workers 2 workers present; waiting for workers to join',
        pausedSeconds: 0,
      }),
    ]);
    t = 9_999;
    await aRound(); // the count is the same and 10 s have not passed: nothing new
    expect(pauses()).toHaveLength(1);
    t = 10_000;
    await aRound();
    expect(pauses()).toHaveLength(2);
    expect(pauses()[1]).toMatchObject({ pausedSeconds: 10, workers: 1 });
    t = 12_500;
    c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' });
    await aRound();
    expect(pauses()[2]).toMatchObject({ level: 30, msg: 'resumed with 2 workers', pausedSeconds: 12.5, workers: 2 });
    // A worker lost mid-run: the next pause is a warning, counted afresh from when it began.
    c.leave(a.id, { runId: 'r1', round: c.membership.round, step: 0 }, 'going', false);
    t = 20_000;
    await aRound();
    expect(pauses()[3]).toMatchObject({
      level: 40,
      msg: 'paused at step 0: 1 of --min-workers 2 workers present; waiting for workers to join',
      pausedSeconds: 0,
    });
    c.close();
  });

  describe('ring planning (--exchange)', () => {
    const join = (c: FleetCoordinator, name: string, peer = true) =>
      c.register({ workerName: name, engine: 'cpu', device: 'cpu', runId: '', peerAddress: peer ? `${name}:7071` : '' })
        .member.id;
    /** Every member's answer for a train step of `shards` shards, in join order. */
    async function answers(c: FleetCoordinator, ids: string[], shards: number, kind: 'train' | 'embed' = 'train') {
      // Step 1: no step before it was recomputed central, whatever the coordinator starts with.
      c.execute(new StepWork<TrainResult>(kind, 1, 0, planShards(batch, shards))).catch(() => undefined);
      const out = [];
      for (const id of ids) {
        const a = await c.nextStep(id, { ...run, round: c.membership.round });
        if (a.action !== kind) throw new Error(`expected ${kind}, got ${a.action}`);
        out.push(a);
      }
      return out;
    }

    it('auto: a ring from 3 members with peer addresses, in name order (then id), each told its place', async () => {
      const c = make({ exchange: 'auto' });
      const ids = ['c', 'a', 'b'].map((n) => join(c, n));
      const got = await answers(c, ids, 3);
      const [a, b, cc] = [ids[1], ids[2], ids[0]];
      expect(got.map((x) => x.assignment.units)).toEqual([[2], [0], [1]]); // planned a, b, c
      for (const x of got) {
        expect(x.ring?.members.map((m) => m.id)).toEqual([a, b, cc]);
        expect(x.ring?.members.map((m) => m.peerAddress)).toEqual(['a:7071', 'b:7071', 'c:7071']);
        expect(x.ring?.length).toBe(2 + 6); // the gradient, no statistics, the six scalars
        expect(x.ring?.weightsLength).toBe(2);
      }
      expect(got.map((x) => x.ring?.position)).toEqual([2, 0, 1]);
      c.close();
      // Same names: the member id decides.
      const twins = make({ exchange: 'ring' });
      const [x1, x2] = [join(twins, 'x'), join(twins, 'x')];
      const pair = await answers(twins, [x2, x1], 2);
      expect(pair[0].ring?.members.map((m) => m.id)).toEqual([x1, x2].sort());
      twins.close();
    });

    it('no ring: auto with 2 members, a member without a peer address, central, or embedding work', async () => {
      for (const [exchange, names, peers, kind] of [
        ['auto', ['a', 'b'], [true, true], 'train'],
        ['ring', ['a', 'b', 'c'], [true, false, true], 'train'],
        ['central', ['c', 'a', 'b'], [true, true, true], 'train'],
        ['ring', ['a', 'b'], [true, true], 'embed'],
      ] as const) {
        const c = make({ exchange, embeddingDim: 4 });
        const ids = names.map((n, i) => join(c, n, peers[i]));
        const got = await answers(c, ids, names.length, kind);
        expect(
          got.map((x) => x.ring),
          `${exchange} ${names} ${kind}`,
        ).toEqual(names.map(() => undefined));
        // Central plans in join order.
        if (exchange === 'central') expect(got.map((x) => x.assignment.units)).toEqual([[0], [1], [2]]);
        c.close();
      }
      const two = make({ exchange: 'ring' });
      const pair = await answers(two, [join(two, 'a'), join(two, 'b')], 2);
      expect(pair.map((x) => x.ring?.position)).toEqual([0, 1]);
      two.close();
    });

    it("a member's word on a ring peer: bad data refuses the peer's work, unreachable loses it; outside the ring, nothing", async () => {
      const rejected: string[] = [];
      const c = make({ exchange: 'ring', listener: { rejected: (m, kind) => rejected.push(`${m.name} ${kind}`) } });
      const ids = ['a', 'b', 'c'].map((n) => join(c, n));
      await answers(c, ids, 3);
      const outsider = join(c, 'd'); // joined after the ring was planned
      const ref = { ...run, round: c.membership.round };
      c.reportPeer(outsider, ref, ids[0], 'odd', true);
      c.reportPeer(ids[0], ref, outsider, 'odd', true);
      expect(c.lost).toEqual([]);
      c.reportPeer(ids[0], ref, ids[1], 'NaN in hop 2', true);
      expect(rejected).toEqual(['b malformed']);
      expect(c.lost).toEqual([
        expect.objectContaining({
          id: ids[1],
          reason: 'sent an unusable result: sent bad ring data (' + ids[0] + ' (a): NaN in hop 2)',
        }),
      ]);
      c.close();
      const d = make({ exchange: 'ring' });
      const dIds = ['a', 'b', 'c'].map((n) => join(d, n));
      await answers(d, dIds, 3);
      d.reportPeer(dIds[2], { ...run, round: d.membership.round }, dIds[0], 'connection refused', false);
      expect(d.lost).toEqual([
        expect.objectContaining({
          id: dIds[0],
          reason: 'unreachable from its ring neighbour (' + dIds[2] + ' (c): connection refused)',
        }),
      ]);
      d.close();
    });
  });

  it('cuts what a worker says of itself to size, hands out slices from offset 0, and refuses fractional ones', () => {
    const c = make();
    const { member } = c.register({
      workerName: 'n'.repeat(200),
      engine: 'e'.repeat(100),
      device: 'd'.repeat(400),
      runId: '',
      peerAddress: 'p'.repeat(400),
    });
    expect([member.name.length, member.engine.length, member.device.length, member.peerAddress?.length]).toEqual([
      128, 64, 256, 300,
    ]);
    const r = { ...run, runId: 'r1' };
    expect(c.weightSlice(member.id, r, 0, 2).values).toHaveLength(2);
    for (const [offset, length] of [
      [0.5, 1],
      [0, 1.5],
      [Number.NaN, 1],
      [0, 2 ** 60],
    ])
      expect(() => c.weightSlice(member.id, r, offset, length), `${offset} ${length}`).toThrow(
        /is outside the 2 weights/,
      );
    c.close();
  });

  it('a long poll of a member removed meanwhile ends NOT_FOUND; a result for the other kind of work is stale', async () => {
    const c = make({ longPollMs: 5000 });
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    const polling = c.nextStep(a, run);
    c.leave(a, run, 'gone away');
    await expect(polling).rejects.toMatchObject({
      code: 'not-member',
      message: `worker ${a} is not a member of run r1 (removed: left: gone away); register again`,
    });
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    c.execute(new StepWork<TrainResult>('train', 3, 0, planShards(batch, 1))).catch(() => undefined);
    const next = await c.nextStep(b, run);
    if (next.action !== 'train') throw new Error('expected an assignment');
    expect(() => c.acceptEmbeddings(b, next.run, [0], 0, { values: new Float32Array(0), dim: 4 } as never)).toThrow(
      'no embed work is open (the run is at step 3)',
    );
    c.close();
  });

  it('names the images of embedding units only while embedding', async () => {
    const c = make({ embeddingDim: 4 });
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    expect(c.embedImagesOf([0])).toEqual([]);
    const units = planShards(batch, 2);
    c.execute(new StepWork<TrainResult>('embed', 0, 0, units)).catch(() => undefined);
    await c.nextStep(a, run);
    expect(c.embedImagesOf([1, 0])).toEqual([...units[1].imageIds, ...units[0].imageIds]);
    expect(c.embedImagesOf([7])).toEqual([]);
    c.close();
  });

  it('finish tells each member once it asks, and waits for the others only until its deadline', async () => {
    const c = make();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    let done = false;
    const finishing = c.finish(60_000).then(() => (done = true));
    expect((await c.nextStep(a, run)).action).toBe('finish');
    expect(c.heartbeat(b, run).stop).toBe(true);
    await finishing; // both told: long before the deadline
    expect(done).toBe(true);
    const d = make();
    d.register({ workerName: 'silent', engine: 'cpu', device: 'cpu', runId: '' });
    const t0 = Date.now();
    await d.finish(300);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    d.close();
    c.close();
  });

  it('a worker that leaves because it cannot compute its shards: its shards are refused against it; the last one stops the run', async () => {
    const c = make();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    const executing = c.execute(new StepWork<TrainResult>('train', 0, 0, planShards(batch, 2)));
    await c.nextStep(a, run);
    c.leave(a, run, '', true);
    await expect(executing).rejects.toThrow(/^step 0: shard 0 could not be computed/);
    expect(c.lost).toEqual([
      expect.objectContaining({ id: a, reason: 'could not compute its shards: no reason given' }),
    ]);
    c.close();
    // Not failed: an ordinary leave, and a leave of someone not a member is ignored.
    const d = make();
    const x = d.register({ workerName: 'x', engine: 'cpu', device: 'cpu', runId: '' }).member.id;
    d.leave('w9-nobody', run, 'bye');
    d.leave(x, run, '');
    expect(d.lost).toEqual([expect.objectContaining({ id: x, reason: 'left: no reason given' })]);
    d.close();
  });

  it('refuses a worker of another run and messages without a run', () => {
    const c = make();
    expect(() => c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: 'r2' })).toThrow(
      /belongs to run r2; this coordinator runs r1/,
    );
    expect(() => c.heartbeat('w1', undefined)).toThrow(/without a run reference/);
    c.close();
  });
});

describe('worker gradients over several shards', () => {
  it('equal the triplet-weighted average of the shards computed one by one (what the coordinator does)', async () => {
    await useBackend('wasm');
    const catalogue = syntheticCatalogue({ items: 40, categories: 3, views: 4, seed: 2 });
    const model = createModelState(
      buildArchitecture(
        modelConfig({
          imageSize: 16,
          width: 0.0625,
          categories: 3,
          primaryCapsuleDim: 4,
          classCapsuleDim: 4,
          dropout: 0.3,
        }),
      ),
      4,
    );
    const b = samplePkBatch({
      seed: 1,
      epoch: 0,
      step: 0,
      itemsPerBatch: 6,
      imagesPerItem: 3,
      items: trainItems(catalogue),
    });
    const shards = planShards(b, 2);
    const ctx = {
      model,
      catalogue,
      conv: fastGradConv,
      step: 3,
      epoch: 0,
      cfg: {
        seed: 1,
        augment: AugmentConfigSchema.parse({}),
        mining: 'random' as const,
        margin: 2,
        marginLossWeight: 0.5,
      },
    };
    const both = await computeShardsGradient(shards, ctx);
    const each = [await computeShardsGradient([shards[0]], ctx), await computeShardsGradient([shards[1]], ctx)];
    const avg = weightedAverage(each.map((g) => ({ triplets: g.triplets, grads: g.grads })));
    expect(both.triplets).toBe(each[0].triplets + each[1].triplets);
    for (const [name, g] of both.grads) expect(relativeError(g, avg.grads.get(name)!)).toBeLessThan(1e-5);
    for (const [name, s] of both.bnStats)
      expect(relativeError(s, meanOf([each[0].bnStats.get(name)!, each[1].bnStats.get(name)!]))).toBeLessThan(1e-6);
    expect(both.loss).toBeCloseTo(
      (each[0].loss * each[0].triplets + each[1].loss * each[1].triplets) / both.triplets,
      5,
    );
    await expect(computeShardsGradient([], ctx)).rejects.toThrow(/no shards/);
    model.dispose();
  });
});

describe('hard-negative plan', () => {
  it("a step's plan uses the last hard-negative embeddings: confusable items share shards", () => {
    // 8 items of 3 images; items i and 7-i are near-duplicates.
    const items = new Map<number, number[]>(Array.from({ length: 8 }, (_, i) => [i, [3 * i, 3 * i + 1, 3 * i + 2]]));
    const embeddings = new Map<number, Float32Array>(
      Array.from({ length: 8 }, (_, i) => [i, Float32Array.from([Math.min(i, 7 - i), i >= 4 ? 0.01 : 0])]),
    );
    const inputs = { cfg: { seed: 4, imagesPerItem: 3 }, items, itemsPerBatch: 8, stepsPerEpoch: 1, shards: 4 };
    const plain = planStep(inputs, 0);
    const grouped = planStep({ ...inputs, embeddings }, 0);
    const pairs = (shards: { itemIds: number[] }[]) =>
      shards.map((sh) => [...new Set(sh.itemIds)].sort((a, b) => a - b).join(','));
    expect(pairs(grouped.shards).sort()).toEqual(['0,7', '1,6', '2,5', '3,4']);
    expect(pairs(plain.shards).sort()).not.toEqual(['0,7', '1,6', '2,5', '3,4']);
    // Same batch either way: only its split changes.
    expect(grouped.batchHash).toBe(plain.batchHash);
  });

  it('groups confusable items of a batch so they share a shard', () => {
    // Items 0..7: pairs (0,7), (1,6), (2,5), (3,4) are near-duplicates.
    const emb = new Map<number, Float32Array>(
      Array.from({ length: 8 }, (_, i) => [i, Float32Array.from([Math.min(i, 7 - i), i >= 4 ? 0.01 : 0])]),
    );
    const batchItems = [0, 1, 2, 3, 4, 5, 6, 7].flatMap((i) => [i, i, i]);
    const affinity = confusableAffinity(batchItems, emb, 4);
    for (let i = 0; i < 4; i++) expect(affinity.get(i)).toBe(affinity.get(7 - i));
    const pk = { imageIds: batchItems.map((_, k) => k), itemIds: batchItems };
    const grouped = planShards(pk, 4, affinity).map((s) => s.itemIds);
    const plain = planShards(pk, 4).map((s) => s.itemIds);
    expect(meanWithinShardDistance(grouped, emb)).toBeLessThan(meanWithinShardDistance(plain, emb));
    expect(confusableAffinity(batchItems, new Map(), 4).size).toBe(0);
  });

  it('numbers groups in batch order; of equally near neighbours, the earlier in the batch joins first', () => {
    const at = (...xs: number[]) => new Map(xs.map((x, i) => [i, Float32Array.of(x)]));
    // Item 0 at 0 has three neighbours at distance 1 (items 1, 2, 3) and item 4 far away; 5 items in
    // 3 shards make groups of 2: item 0 takes item 1 (first of the tie), item 2 takes item 3, 4 is alone.
    const tie = confusableAffinity([0, 0, 1, 2, 3, 4], at(0, 1, -1, 1, 50), 3);
    expect([...tie].sort((a, b) => a[0] - b[0])).toEqual([
      [0, 0],
      [1, 0],
      [2, 1],
      [3, 1],
      [4, 2],
    ]);
    // Items without an embedding get no group.
    expect(confusableAffinity([0, 9, 1], at(0, 1), 1)).toEqual(
      new Map([
        [0, 0],
        [1, 0],
      ]),
    );
  });

  it('mean within-shard distance: squared distances over distinct item pairs that have embeddings', () => {
    const emb = new Map([0, 1, 3, 7].map((x, i) => [i, Float32Array.of(x)]));
    // Pairs (0,1): 1 and (2,3): 16; the repeated item 1 and item 9 (no embedding) add none.
    expect(
      meanWithinShardDistance(
        [
          [0, 1, 1, 9],
          [2, 3],
        ],
        emb,
      ),
    ).toBe(8.5);
    expect(meanWithinShardDistance([[0], [1, 1]], emb)).toBe(0);
  });
});

describe('worker data check', () => {
  it('refuses to train on data that differs from the coordinator', () => {
    expect(() =>
      assertSameCatalogue({ name: 'a', images: 10, categories: 3 }, { name: 'b', images: 12, categories: 3 }),
    ).toThrow(/differs from the coordinator's \(b: 12 images, 3 categories\); mount the same --data path/);
    expect(() =>
      assertSameCatalogue({ name: 'a', images: 10, categories: 3 }, { name: 'a', images: 10, categories: 3 }),
    ).not.toThrow();
  });
});

describe('fleet coordinator failure paths (no transport)', () => {
  const weights: WeightSource = {
    version: 0,
    chunks: () => [],
    flat: () => new Float32Array(2),
    gradientSpecs: [{ name: 'g', shape: [2] }],
    statSpecs: [],
  };
  const make = (now?: () => number) =>
    new FleetCoordinator(
      {
        runId: 'r1',
        minWorkers: 1,
        maxWorkers: 4,
        heartbeatIntervalMs: 50,
        heartbeatTimeoutMs: 1000,
        assignmentTimeoutMs: 10_000,
        longPollMs: 100,
        gradientDtype: 'float32',
        configJson: '{}',
        now,
      },
      weights,
      silent,
    );
  const run = { runId: 'r1', round: 0, step: 0 };

  it('stops the run when the same shard is refused on two workers, instead of dropping the fleet one by one', async () => {
    const c = make();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const b = c.register({ workerName: 'b', engine: 'cpu', device: 'cpu', runId: '' }).member;
    const work = new StepWork<TrainResult>('train', 4, 0, planShards(batch, 1));
    const executing = c.execute(work);
    executing.catch(() => undefined);
    let t = await c.nextStep(a.id, run);
    expect(t.action).toBe('train');
    c.rejectResult(a.id, 'loss is NaN');
    c.register({ workerName: 'c', engine: 'cpu', device: 'cpu', runId: '' });
    do t = await c.nextStep(b.id, run);
    while (t.action === 'wait');
    c.rejectResult(b.id, 'loss is NaN');
    await expect(executing).rejects.toThrow(
      /step 4: shard 0 gave unusable results on 2 workers \(w1: loss is NaN; w2: loss is NaN\); stopping the run/,
    );
    c.close();
  });

  it('does not drop workers for silence measured across its own stall', () => {
    let clock = 0;
    const c = make(() => clock);
    c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' });
    const sweep = () => (c as unknown as { sweep(): void }).sweep();
    (c as unknown as { lastSweep: number }).lastSweep = 0;
    clock = 5000; // the event loop was blocked for 5 s: no heartbeat could be read
    sweep();
    expect(c.lost).toEqual([]);
    clock = 5300; // the worker stays silent after the stall: now it counts, from half a timeout back
    sweep();
    expect(c.lost).toEqual([]);
    clock = 5600;
    sweep();
    expect(c.lost.map((l) => l.name)).toEqual(['a']);
    c.close();
  });

  it('counts a gap between sweeps as its own stall from just over half a heartbeat timeout (1000 ms here)', () => {
    for (const [gap, stalled] of [
      [500, false],
      [501, true],
      [1500, true],
    ] as const) {
      let clock = 0;
      const c = make(() => clock);
      c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }); // last seen at 0
      (c as unknown as { lastSweep: number }).lastSweep = 1600 - gap;
      clock = 1600; // silent for 1.6 s, past the 1 s timeout
      (c as unknown as { sweep(): void }).sweep();
      expect(
        c.lost.map((l) => l.name),
        `gap ${gap}`,
      ).toEqual(stalled ? [] : ['a']);
      c.close();
    }
  });

  it('refuses registrations once the run is over, and long polls while stopping', async () => {
    const c = make();
    const a = c.register({ workerName: 'a', engine: 'cpu', device: 'cpu', runId: '' }).member;
    await c.finish(0);
    expect(() => c.register({ workerName: 'late', engine: 'cpu', device: 'cpu', runId: '' })).toThrow(
      expect.objectContaining({ code: 'finished', message: 'run r1 is over' }),
    );
    const d = make();
    const m = d.register({ workerName: 'x', engine: 'cpu', device: 'cpu', runId: '' }).member;
    d.close();
    await expect(d.nextStep(m.id, run)).rejects.toThrow(/the coordinator is stopping/);
    expect((await c.nextStep(a.id, run)).action).toBe('finish');
    c.close();
  });
});

describe('worker call outcomes (the client maps transport errors to what they mean)', () => {
  it('names every status a coordinator answers with, and leaves other errors alone', async () => {
    const grpc = await import('@grpc/grpc-js');
    const { callFailure } = await import('../../src/worker/fleet-client.js');
    const err = (code: number, details = 'd') =>
      Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
    const expected: [number, string][] = [
      [grpc.status.OUT_OF_RANGE, 'over'],
      [grpc.status.NOT_FOUND, 'gone'],
      [grpc.status.FAILED_PRECONDITION, 'wrong-run'],
      [grpc.status.ABORTED, 'stale'],
      [grpc.status.INVALID_ARGUMENT, 'rejected'],
      [grpc.status.UNAUTHENTICATED, 'refused'],
      [grpc.status.PERMISSION_DENIED, 'refused'],
      [grpc.status.RESOURCE_EXHAUSTED, 'full'],
      [grpc.status.CANCELLED, 'cancelled'],
      [grpc.status.UNAVAILABLE, 'unreachable'],
      [grpc.status.DEADLINE_EXCEEDED, 'unreachable'],
      [grpc.status.UNKNOWN, 'unreachable'],
      [grpc.status.INTERNAL, 'unreachable'],
    ];
    for (const [code, outcome] of expected) {
      expect(callFailure(err(code, 'run r1 is over')), grpc.status[code]).toEqual({
        outcome,
        details: 'run r1 is over',
        status: grpc.status[code],
      });
    }
    expect(callFailure(err(grpc.status.UNIMPLEMENTED))).toBeUndefined();
    expect(callFailure(new TypeError('a bug'))).toBeUndefined();
  });
});

describe('worker retries (the client owns backoff for idempotent calls)', () => {
  const grpcError = async (code: number, details: string) => {
    const grpc = await import('@grpc/grpc-js');
    return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
  };

  it('retries an idempotent call while the coordinator does not answer, and stops at the deadline', async () => {
    const grpc = await import('@grpc/grpc-js');
    const { Backoff, retrying } = await import('../../src/worker/fleet-client.js');
    let clock = 0;
    const said: string[] = [];
    const running = new AbortController().signal;
    const slept: number[] = [];
    const backoff = new Backoff({
      giveUpAfterMs: 10_000,
      signal: running,
      sleep: async (ms) => void slept.push(ms), // the test does not sleep
      now: () => clock,
      onRetry: (f, gone) => said.push(`retry ${f.outcome} after ${gone}`),
      onGiveUp: (f, gone) => said.push(`give up ${f.status} after ${gone}`),
    });
    const down = await grpcError(grpc.status.UNAVAILABLE, 'connection refused');
    let calls = 0;
    const flaky = async () => {
      calls++;
      clock += 3000;
      if (calls < 3) throw down;
      return 'work';
    };
    expect(await retrying(flaky, backoff)).toBe('work');
    expect(calls).toBe(3);
    expect(said).toEqual(['retry unreachable after 0', 'retry unreachable after 3000']);
    // A new outage starts afresh and ends at the deadline, said once however many calls hear it.
    said.length = 0;
    const dead = async () => {
      clock += 4000;
      throw down;
    };
    await expect(retrying(dead, backoff)).rejects.toBe(down);
    expect(backoff.failed({ outcome: 'unreachable', details: 'x', status: 'UNAVAILABLE' })).toBe(false);
    expect(said).toEqual([
      'retry unreachable after 0',
      'retry unreachable after 4000',
      'retry unreachable after 8000',
      'give up UNAVAILABLE after 12000',
    ]);
    // Stopping (SIGTERM): no retry, however unreachable the coordinator is.
    expect(slept.length).toBeGreaterThan(0);
    expect(slept.every((ms) => ms >= 150 && ms <= 6250)).toBe(true); // 200 ms doubling to 5 s, +-25%
    const stopping = new Backoff({ giveUpAfterMs: 60_000, signal: AbortSignal.abort() });
    let tries = 0;
    await expect(
      retrying(async () => {
        tries++;
        throw down;
      }, stopping),
    ).rejects.toBe(down);
    expect(tries).toBe(1);
    // Not an outage: no retry.
    const over = await grpcError(grpc.status.OUT_OF_RANGE, 'run r1 is over');
    let once = 0;
    await expect(
      retrying(async () => {
        once++;
        throw over;
      }, backoff),
    ).rejects.toBe(over);
    expect(once).toBe(1);
  });
});
