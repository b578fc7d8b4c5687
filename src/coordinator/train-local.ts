// Single-process training (`tricaps train --workers 0`): the step loop reads top to bottom —
// plan the PK batch, load it, compute gradients (worker/trainer), apply them (optimizer) — with
// retrieval evaluated before and after.
import * as tf from '@tensorflow/tfjs-core';
import { initEngine, type Engine } from '../shared/engine/engine.js';
import { trainItems, type Catalogue } from '../shared/data/catalogue.js';
import { openTrainingCatalogue } from '../shared/data/open-catalogue.js';
import { loadTrainingImages } from '../shared/data/batch.js';
import { Prefetcher } from '../shared/data/prefetch.js';
import { samplePkBatch, stepsPerEpoch } from '../shared/data/pk-sampler.js';
import { evaluateRetrieval, type EvaluationResult } from '../shared/eval/evaluate.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { createModelState } from '../shared/model/params.js';
import { stepDirName } from '../shared/checkpoint-format.js';
import { captureCheckpoint, openCheckpoints } from './checkpoint.js';
import { join } from 'node:path';
import { hashInts } from '../shared/rng.js';
import { itemsPerBatch, plannedSteps, type TrainConfig } from '../shared/train-config.js';
import { UsageError } from '../shared/errors.js';
import { assertFiniteLoss, computeGradients, type StepStats } from '../shared/train/gradients.js';
import { ParameterUpdater } from './optimizer.js';

export interface StepReport extends StepStats {
  step: number;
  epoch: number;
  seconds: number;
  /** Time this step waited for its batch (0 when prefetching kept up). */
  dataWaitSeconds: number;
  imagesPerSecond: number;
  learningRate: number;
}

export interface TrainHooks {
  /** The number of steps the run will take (--steps, or what --epochs comes to). */
  onPlanned?(totalSteps: number): void;
  onStep?(report: StepReport): void;
  onEvaluation?(phase: 'before' | 'after', results: EvaluationResult[]): void;
}

export interface TrainResult {
  engine: Engine;
  stepsRun: number;
  before: EvaluationResult[];
  after: EvaluationResult[];
  losses: number[];
  /** Per-step time spent waiting for data. */
  dataWaitSeconds: number[];
  seconds: number;
  checkpoint?: string;
}

/** Checkpointing of a single-process run (the coordinator's flags of the same names). */
export interface LocalCheckpointing {
  every: number;
  keep: number;
  resume: boolean;
}

export async function trainLocal(
  cfg: TrainConfig,
  log: Logger,
  hooks: TrainHooks = {},
  ckpt: LocalCheckpointing = { every: 0, keep: 3, resume: false },
): Promise<TrainResult> {
  if (cfg.workers > 0)
    throw new Error('trainLocal trains in this process; --workers N runs the local fleet (local-fleet.ts)');
  // Data problems are reported before any engine starts.
  const catalogue: Catalogue = await openTrainingCatalogue(cfg.data);
  const engine = await initEngine(cfg.engine, log);
  const arch = buildArchitecture({ ...cfg.model, categories: catalogue.categories.length });
  // Single-process batches are not sharded: a checkpoint of this mode resumes only in this mode.
  const jobKey = {
    model: arch.config,
    seed: cfg.seed,
    batchTriplets: cfg.batchTriplets,
    imagesPerItem: cfg.imagesPerItem,
    data: cfg.data,
    shards: 'single-process',
    mining: cfg.mining,
  };
  const { store, resumed } = openCheckpoints(cfg.checkpointDir, ckpt, jobKey, log);
  const model = createModelState(arch, cfg.seed, resumed?.weights.values);
  const updater = new ParameterUpdater(model, cfg.optimizer);
  if (resumed) {
    await updater.restore(resumed.optimizer);
    log.info(
      { checkpoint: resumed.dir, step: resumed.state.nextStep },
      `resuming from ${resumed.dir} at step ${resumed.state.nextStep}`,
    );
  }
  const runId = resumed?.state.runId ?? `local-${Date.now().toString(36)}`;
  let lastSaved = -1;
  const save = async (nextStep: number, reason: string, loss: number | null) => {
    if (!store || lastSaved === nextStep) return undefined;
    const saved = store.save(
      await captureCheckpoint(
        model,
        updater,
        catalogue.categories,
        {
          runId,
          round: 0,
          nextStep,
          epoch: Math.floor(nextStep / Math.max(1, perEpoch)),
          seed: cfg.seed,
          config: jobKey,
        },
        { loss, recall_at_1: null },
      ),
    );
    lastSaved = nextStep;
    log.info({ checkpoint: saved.dir, step: nextStep, reason }, `checkpoint ${saved.dir} saved (${reason})`);
    return saved.dir;
  };
  const items = trainItems(catalogue);
  const P = itemsPerBatch(cfg);
  const perEpoch = stepsPerEpoch([...items.values()].filter((ids) => ids.length >= 2).length, P);
  if (perEpoch === 0)
    throw new UsageError(
      `${catalogue.name} has ${items.size} train items; a batch of ${cfg.batchTriplets} triplets needs ${P}. Use more --items or fewer --batch-triplets`,
    );
  log.info(
    { catalogue: catalogue.name, params: arch.params.length, stepsPerEpoch: perEpoch, itemsPerBatch: P },
    'training in this process',
  );

  const totalSteps = plannedSteps(cfg, perEpoch);
  hooks.onPlanned?.(totalSteps);
  const evalOpts = { masks: cfg.evalMasks, batchSize: cfg.evalBatch, conv: engine.conv };
  const before = await evaluateRetrieval(model, catalogue, evalOpts);
  hooks.onEvaluation?.('before', before);

  // Host-side batches (pixels and labels), one step ahead of compute.
  const loadStep = async (s: number) => {
    const epoch = Math.floor(s / perEpoch);
    const plan = samplePkBatch({
      seed: cfg.seed,
      epoch,
      step: s % perEpoch,
      itemsPerBatch: P,
      imagesPerItem: cfg.imagesPerItem,
      items,
    });
    const size = arch.config.imageSize;
    const pixels = await loadTrainingImages(catalogue, plan.imageIds, size, cfg.augment, {
      seed: cfg.seed,
      epoch,
      step: s,
      worker: 0,
    });
    return { epoch, plan, pixels };
  };
  const prefetcher = new Prefetcher(loadStep);

  const started = performance.now();
  const losses: number[] = [];
  const waits: number[] = [];
  let step = resumed?.state.nextStep ?? 0;
  for (; step < totalSteps; step++) {
    if (cfg.maxMinutes > 0 && performance.now() - started > cfg.maxMinutes * 60_000) {
      log.warn(
        { step, maxMinutes: cfg.maxMinutes },
        `stopping after ${step} steps: --max-minutes ${cfg.maxMinutes} reached`,
      );
      break;
    }
    const stepStart = performance.now();
    const { value: batch, waitSeconds } = await prefetcher.take(step);
    const { epoch, plan } = batch;
    const images = tf.tensor4d(batch.pixels, [plan.imageIds.length, arch.config.imageSize, arch.config.imageSize, 3]);
    const result = computeGradients(
      model,
      { images, itemIds: plan.itemIds, categories: plan.imageIds.map((id) => catalogue.images[id].category) },
      {
        mining: cfg.mining,
        margin: cfg.margin,
        marginLossWeight: cfg.marginLossWeight,
        conv: engine.conv,
        seed: hashInts(cfg.seed, epoch, step),
      },
    );
    images.dispose();
    let stats: StepStats;
    try {
      stats = await result.readStats(); // the step's one read-back, awaited
      assertFiniteLoss(stats, step); // before the optimizer step: never apply a non-finite update
      updater.apply(result.grads, result.bnUpdates, epoch);
    } finally {
      result.dispose();
    }
    losses.push(stats.loss);
    waits.push(waitSeconds);
    const seconds = (performance.now() - stepStart) / 1000;
    hooks.onStep?.({
      ...stats,
      step,
      epoch,
      seconds,
      dataWaitSeconds: waitSeconds,
      imagesPerSecond: plan.imageIds.length / seconds,
      learningRate: updater.learningRateAt(epoch),
    });
    if (ckpt.every > 0 && (step + 1) % ckpt.every === 0) await save(step + 1, `every ${ckpt.every} steps`, stats.loss);
    // Compute is synchronous: yield to the event loop so timers (progress bar, signals) run.
    await new Promise((resolve) => setImmediate(resolve));
  }
  prefetcher.clear();
  const trainSeconds = (performance.now() - started) / 1000;
  const after = await evaluateRetrieval(model, catalogue, evalOpts);
  hooks.onEvaluation?.('after', after);
  const checkpoint = store
    ? ((await save(step, 'end of run', losses.at(-1) ?? null)) ?? join(store.root, stepDirName(step)))
    : undefined;
  updater.dispose();
  model.dispose();
  log.debug({ tensors: tf.memory().numTensors }, 'training finished');
  return { engine, stepsRun: step, before, after, losses, dataWaitSeconds: waits, seconds: trainSeconds, checkpoint };
}
