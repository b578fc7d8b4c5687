// The coordinator's step loop in-process, no network: a fake executor answers every shard with known
// gradients, and the real step (average -> check -> Adam -> publish), loop (cadences, clock, operator
// control) and sinks run on the cpu backend.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import type { TrainResult } from '../../src/coordinator/fleet-coordinator.js';
import { StoppedError } from '../../src/coordinator/fleet-coordinator.js';
import { ParameterUpdater } from '../../src/coordinator/optimizer.js';
import { RunControl } from '../../src/coordinator/run-control.js';
import {
  ModelWeightSource,
  runStep,
  type StepContext,
  type StepExecutor,
  type StepReport,
} from '../../src/coordinator/step.js';
import { fanOut, type StepSink } from '../../src/coordinator/step-sink.js';
import type { StepWork } from '../../src/coordinator/step-work.js';
import { LoopStopped, trainLoop, type LoopDeps } from '../../src/coordinator/train-loop.js';
import { createLogger } from '../../src/shared/log.js';
import { OptimizerConfigSchema } from '../../src/shared/optimizer-config.js';
import { useBackend } from '../helpers.js';
import { tinyModel } from '../tiny-model.js';

const LR = 0.01;

/**
 * Answers shard u with every gradient value equal to `gradient(u)`, weighted by `triplets(u)`,
 * BN statistics equal to u + 1; records what it handed out and what was given back.
 */
class FakeFleet implements StepExecutor {
  round = 1;
  handedOut = 0;
  released = 0;
  executed: number[] = [];

  constructor(
    private readonly model: ReturnType<typeof tinyModel>,
    private readonly gradient: (unit: number, step: number) => number,
    private readonly triplets: (unit: number) => number = (u) => u + 1,
    private readonly lossOf: (unit: number) => number = (u) => 1 + u,
  ) {}

  async execute(work: StepWork<TrainResult> | StepWork<never>): Promise<void> {
    this.executed.push(work.step);
    for (const unit of work.units) {
      const fill = (v: tf.Variable, value: number) => {
        this.handedOut++;
        return new Float32Array(v.size).fill(value);
      };
      const result: TrainResult = {
        triplets: this.triplets(unit.index),
        activeTriplets: 1,
        loss: this.lossOf(unit.index),
        meanPositiveDistance: 0.5,
        meanNegativeDistance: 1.5,
        grads: new Map([...this.model.trainable].map(([n, v]) => [n, fill(v, this.gradient(unit.index, work.step))])),
        bnStats: new Map([...this.model.buffers].map(([n, v]) => [n, fill(v, unit.index + 1)])),
        shards: 1,
        dataSeconds: 0.01,
        computeSeconds: 0.02,
      };
      (work as StepWork<TrainResult>).results.push({ workerId: `w${unit.index + 1}`, units: [unit.index], result });
    }
  }

  release(arrays: Iterable<Float32Array>): void {
    this.released += [...arrays].length;
  }
}

async function setup(
  gradient: (unit: number, step: number) => number,
  triplets?: (unit: number) => number,
  lossOf?: (unit: number) => number,
) {
  await useBackend('cpu');
  const model = tinyModel();
  const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({ learningRate: LR }));
  const weights = new ModelWeightSource(model);
  await weights.publish(0);
  const fleet = new FakeFleet(model, gradient, triplets, lossOf);
  // 8 items of 2 images, batches of 4 items in 2 mining shards.
  const items = new Map(Array.from({ length: 8 }, (_, i) => [i, [2 * i, 2 * i + 1]]));
  const ctx: StepContext = {
    cfg: { seed: 3, imagesPerItem: 2 },
    items,
    itemsPerBatch: 4,
    stepsPerEpoch: 2,
    shards: 2,
    model,
    updater,
    weights,
    executor: fleet,
  };
  const dispose = () => {
    updater.dispose();
    model.dispose();
  };
  return { model, updater, weights, fleet, ctx, dispose };
}

const read = async (v: tf.Tensor) => Float32Array.from(await v.data());
const silent = createLogger('test', 'silent');

/** Loop dependencies with recording sinks; `overrides` replace any of them. */
function loopDeps(ctx: StepContext, overrides: Partial<LoopDeps> = {}) {
  const steps: StepReport[] = [];
  const checkpoints: { nextStep: number; reason: string }[] = [];
  const evaluations: number[] = [];
  const recorder: Partial<StepSink> = { step: (r) => steps.push(r) };
  const deps: LoopDeps = {
    runStep: (step) => runStep(ctx, step),
    evaluate: async (nextStep) => {
      evaluations.push(nextStep);
      return {
        mask: 'oracle',
        recall: { 1: 0.5 },
        mapAtR: 0.25,
        queries: 1,
        queriesWithoutMatch: 0,
        gallery: 1,
      } as never;
    },
    checkpoint: async (nextStep, reason) => {
      checkpoints.push({ nextStep, reason });
      return `ck-${nextStep}`;
    },
    control: new RunControl(),
    sink: fanOut([recorder]),
    log: silent,
    ...overrides,
  };
  return { deps, steps, checkpoints, evaluations };
}

describe('one step (runStep)', () => {
  it('averages the shards by triplets in shard order, applies Adam once, publishes the weights, returns every buffer', async () => {
    // Shard 0: gradient 1 with 1 triplet; shard 1: gradient 4 with 2 triplets -> average 3 everywhere.
    const { model, weights, fleet, ctx, dispose } = await setup((u) => (u === 0 ? 1 : 4));
    const before = new Map(await Promise.all([...model.trainable].map(async ([n, v]) => [n, await read(v)] as const)));
    const outcome = await runStep(ctx, 0);
    if (!outcome.applied) throw new Error(outcome.reason);
    const params = [...model.trainable.values()].reduce((s, v) => s + v.size, 0);
    expect(outcome.report.gradientNorm).toBeCloseTo(3 * Math.sqrt(params), 3);
    expect(outcome.report).toMatchObject({
      step: 0,
      epoch: 0,
      triplets: 3,
      workers: 2,
      shards: 2,
      shardsComputed: 2,
      shardGroups: [[0], [1]],
      bytesSent: 0,
      bytesReceived: 0,
      round: 1,
    });
    // Loss: triplet-weighted mean of the shards' losses (1 and 2): (1*1 + 2*2) / 3.
    expect(outcome.report.loss).toBeCloseTo(5 / 3, 6);
    // Adam's first update is lr * g / (|g| + eps): every weight moved by -lr (g = 3 > 0).
    for (const [n, v] of model.trainable) {
      const after = await read(v);
      const moved = after.map((x, i) => x - before.get(n)![i]);
      expect(Math.max(...moved.map((d) => Math.abs(d + LR))), n).toBeLessThan(1e-6);
    }
    // BN statistics: the plain mean of the shards' (1 and 2).
    for (const v of model.buffers.values())
      expect(Array.from(await read(v)).every((x) => Math.abs(x - 1.5) < 1e-6)).toBe(true);
    expect(weights.version).toBe(1);
    expect(weights.chunks().length).toBeGreaterThan(0);
    expect(fleet.released).toBe(fleet.handedOut);
    dispose();
  });

  it('applies nothing when no shard found a triplet, and still returns the buffers', async () => {
    const { model, weights, fleet, ctx, dispose } = await setup(
      () => 1,
      () => 0,
    );
    const before = await read(model.trainable.values().next().value!);
    const outcome = await runStep(ctx, 0);
    expect(outcome).toEqual({ applied: false, reason: 'step 0: no shard found a triplet; no update' });
    expect(Array.from(await read(model.trainable.values().next().value!))).toEqual(Array.from(before));
    expect(weights.version).toBe(0);
    expect(fleet.released).toBe(fleet.handedOut);
    dispose();
  });

  it('refuses a non-finite average: the weights stay as they were', async () => {
    const { model, weights, fleet, ctx, dispose } = await setup((u) => (u === 1 ? Number.POSITIVE_INFINITY : 1));
    const before = await read(model.trainable.values().next().value!);
    await expect(runStep(ctx, 0)).rejects.toThrow(/step 0: loss .*, gradient norm Infinity; not applying this update/);
    expect(Array.from(await read(model.trainable.values().next().value!))).toEqual(Array.from(before));
    expect(weights.version).toBe(0);
    expect(fleet.released).toBe(fleet.handedOut);
    dispose();
    // A non-finite loss with finite gradients is refused too.
    const nan = await setup(
      () => 1,
      undefined,
      (u) => (u === 0 ? Number.NaN : 1),
    );
    const kept = await read(nan.model.trainable.values().next().value!);
    await expect(runStep(nan.ctx, 7)).rejects.toThrow(/step 7: loss NaN, gradient norm \d.*; not applying this update/);
    expect(Array.from(await read(nan.model.trainable.values().next().value!))).toEqual(Array.from(kept));
    nan.dispose();
  });
});

describe('the step loop (trainLoop)', () => {
  it('runs the planned steps, checkpoints and evaluates at their cadences, reports every step', async () => {
    const { ctx, fleet, dispose } = await setup(() => 1);
    const { deps, steps, checkpoints, evaluations } = loopDeps(ctx);
    const result = await trainLoop(
      { firstStep: 1, totalSteps: 6, maxMinutes: 0, evalEvery: 3, checkpointEvery: 2 },
      deps,
    );
    expect(fleet.executed).toEqual([1, 2, 3, 4, 5]);
    expect(result.nextStep).toBe(6);
    expect(result.stoppedBy).toBeUndefined();
    expect(steps.map((r) => r.step)).toEqual([1, 2, 3, 4, 5]);
    expect(checkpoints).toEqual([
      { nextStep: 2, reason: 'every 2 steps' },
      { nextStep: 4, reason: 'every 2 steps' },
      { nextStep: 6, reason: 'every 2 steps' },
    ]);
    expect(evaluations).toEqual([3, 6]);
    dispose();
  });

  it('honours --max-minutes on its clock: stops at the first boundary past the limit', async () => {
    const { ctx, fleet, dispose } = await setup(() => 1);
    let clock = 0;
    const { deps } = loopDeps(ctx, {
      now: () => clock,
      runStep: async (step) => {
        clock += 60_000; // each step takes a minute
        return runStep(ctx, step);
      },
    });
    const result = await trainLoop(
      { firstStep: 0, totalSteps: 100, maxMinutes: 2.5, evalEvery: 0, checkpointEvery: 0 },
      deps,
    );
    expect(result).toMatchObject({ nextStep: 3, stoppedBy: 'clock' });
    expect(fleet.executed).toEqual([0, 1, 2]);
    dispose();
  });

  it('obeys pause, checkpoint, resume and stop at step boundaries', async () => {
    const { ctx, fleet, dispose } = await setup(() => 1);
    const control = new RunControl();
    const replies: string[] = [];
    const answer = (r: { done?: string; reason?: string }) => replies.push(r.done ?? r.reason ?? '');
    let pausedAt = -1;
    const { deps, checkpoints } = loopDeps(ctx, {
      control,
      sink: fanOut([
        {
          step: (r) => {
            if (r.step === 1) {
              control.submit('pause', '', answer);
              control.submit('checkpoint', '', answer);
              pausedAt = fleet.executed.length;
              // Resume a little later, from outside the loop, then stop.
              setTimeout(() => {
                expect(fleet.executed.length).toBe(pausedAt); // nothing ran while paused
                control.submit('resume', '', answer);
                control.submit('stop', '', answer);
              }, 100);
            }
          },
        },
      ]),
    });
    const result = await trainLoop(
      { firstStep: 0, totalSteps: 10, maxMinutes: 0, evalEvery: 0, checkpointEvery: 0 },
      deps,
    );
    expect(fleet.executed).toEqual([0, 1]);
    expect(result).toMatchObject({ nextStep: 2, stoppedBy: 'operator' });
    expect(checkpoints).toEqual([{ nextStep: 2, reason: 'requested' }]);
    expect(replies[0]).toBe('paused before step 2');
    expect(replies).toHaveLength(4);
    dispose();
  });

  it('an interrupt (SIGTERM) ends the loop with the next step unapplied; a failing step names its step', async () => {
    const { ctx, dispose } = await setup(() => 1);
    const control = new RunControl();
    const { deps } = loopDeps(ctx, {
      control,
      runStep: async (step) => {
        if (step === 2) {
          control.interrupt();
          throw new StoppedError('the coordinator is stopping');
        }
        return runStep(ctx, step);
      },
    });
    const stopped = await trainLoop(
      { firstStep: 0, totalSteps: 10, maxMinutes: 0, evalEvery: 0, checkpointEvery: 0 },
      deps,
    ).catch((e) => e);
    expect(stopped).toBeInstanceOf(LoopStopped);
    expect(stopped.nextStep).toBe(2);
    expect(stopped.reports.map((r: StepReport) => r.step)).toEqual([0, 1]);
    const failing = loopDeps(ctx, {
      runStep: async () => Promise.reject(new Error('disk on fire')),
      abortReason: () => undefined,
    });
    const failed = await trainLoop(
      { firstStep: 4, totalSteps: 10, maxMinutes: 0, evalEvery: 0, checkpointEvery: 0 },
      failing.deps,
    ).catch((e) => e);
    expect(failed.message).toBe('disk on fire');
    expect(failed.loopStep).toBe(4);
    const aborting = loopDeps(ctx, { abortReason: () => '1 of 2 local workers left' });
    await expect(
      trainLoop({ firstStep: 0, totalSteps: 3, maxMinutes: 0, evalEvery: 0, checkpointEvery: 0 }, aborting.deps),
    ).rejects.toThrow('1 of 2 local workers left');
    dispose();
  });
});
