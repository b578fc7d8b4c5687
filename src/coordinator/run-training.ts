// What a training run is whatever computes its steps: the job (catalogue, plan, model, optimizer,
// checkpoints, resume) and its course (evaluation before, the step loop, evaluation after, the final
// checkpoint). The fleet (run-coordinator.ts: gRPC workers) and the single process (train-local.ts:
// an in-process worker) each supply an executor and sinks; the loop and the step are the same code.
import { join } from 'node:path';
import { stepDirName } from '../shared/checkpoint-format.js';
import { trainItems, type Catalogue } from '../shared/data/catalogue.js';
import { openTrainingCatalogue } from '../shared/data/open-catalogue.js';
import { stepsPerEpoch } from '../shared/data/pk-sampler.js';
import { initEngine, type Engine } from '../shared/engine/engine.js';
import { UsageError } from '../shared/errors.js';
import { evaluateRetrieval, type EvaluationResult } from '../shared/eval/evaluate.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture, type Architecture } from '../shared/model/architecture.js';
import { createModelState, type ModelState } from '../shared/model/params.js';
import { itemsPerBatch, plannedSteps, type TrainConfig } from '../shared/train-config.js';
import {
  captureCheckpoint,
  CheckpointWriteError,
  openCheckpoints,
  type Checkpoint,
  type CheckpointStore,
} from './checkpoint.js';
import { StoppedError } from './fleet-coordinator.js';
import { ParameterUpdater } from './optimizer.js';
import type { RunControl } from './run-control.js';
import { runStep, type ModelWeightSource, type StepContext, type StepExecutor, type StepReport } from './step.js';
import type { StepSink } from './step-sink.js';
import { LoopStopped, trainLoop, type LoopResult } from './train-loop.js';

/** The job of a run, opened and checked before anything is served or computed. */
export interface RunJob {
  catalogue: Catalogue;
  items: Map<number, number[]>;
  itemsPerBatch: number;
  stepsPerEpoch: number;
  shards: number;
  totalSteps: number;
  arch: Architecture;
  /** What must not change across a resume. */
  jobKey: Record<string, unknown>;
  store?: CheckpointStore;
  resumed?: Checkpoint;
  firstStep: number;
  runId: string;
  engine: Engine;
  model: ModelState;
  updater: ParameterUpdater;
  dispose(): void;
}

export interface JobOptions {
  shards: number;
  /** The resume key's shard entry: the count for a fleet, 'single-process' for one process. */
  shardsKey: number | string;
  checkpointing: { resume: boolean; every: number; keep: number };
  runId?: string;
  newRunId(): string;
  onPlanned?(totalSteps: number): void;
}

/** Opens the data, plans, checks the flags against them, resumes, starts the engine, builds the model. */
export async function openRun(cfg: TrainConfig, o: JobOptions, log: Logger): Promise<RunJob> {
  // Data problems and flag mistakes are reported before any engine starts.
  const catalogue = await openTrainingCatalogue(cfg.data);
  const items = trainItems(catalogue);
  const P = itemsPerBatch(cfg);
  const perEpoch = stepsPerEpoch([...items.values()].filter((ids) => ids.length >= 2).length, P);
  if (perEpoch === 0) {
    throw new UsageError(
      `${catalogue.name} has ${items.size} train items; a batch of ${cfg.batchTriplets} triplets needs ${P}. Use more --items or fewer --batch-triplets`,
    );
  }
  if (P < 2 * o.shards) {
    throw new UsageError(
      `a batch of ${P} items cannot be split into ${o.shards} mining shards of at least 2 items; use fewer --shards (or --min-workers) or more --batch-triplets`,
    );
  }
  const totalSteps = plannedSteps(cfg, perEpoch);
  o.onPlanned?.(totalSteps);
  const arch = buildArchitecture({ ...cfg.model, categories: catalogue.categories.length });
  // The sampler cursor means nothing for another batch or data.
  const jobKey = {
    model: arch.config,
    seed: cfg.seed,
    batchTriplets: cfg.batchTriplets,
    imagesPerItem: cfg.imagesPerItem,
    data: cfg.data,
    shards: o.shardsKey,
    mining: cfg.mining,
  };
  const { store, resumed } = openCheckpoints(cfg.checkpointDir, o.checkpointing, jobKey, log);
  try {
    return await startJob(cfg, o, log, { catalogue, items, P, perEpoch, totalSteps, arch, jobKey, store, resumed });
  } catch (err) {
    store?.release(); // the directory is not ours to keep if the run never starts
    throw err;
  }
}

async function startJob(
  cfg: TrainConfig,
  o: JobOptions,
  log: Logger,
  j: {
    catalogue: Catalogue;
    items: Map<number, number[]>;
    P: number;
    perEpoch: number;
    totalSteps: number;
    arch: Architecture;
    jobKey: Record<string, unknown>;
    store?: CheckpointStore;
    resumed?: Checkpoint;
  },
): Promise<RunJob> {
  const { catalogue, items, P, perEpoch, totalSteps, arch, jobKey, store, resumed } = j;
  if (resumed && o.runId && o.runId !== resumed.state.runId) {
    throw new UsageError(
      `--run-id ${o.runId}, but ${resumed.dir} belongs to run ${resumed.state.runId}; drop --run-id to continue that run`,
    );
  }
  const engine = await initEngine(cfg.engine, log);
  const model = createModelState(arch, cfg.seed, resumed?.weights.values);
  const updater = new ParameterUpdater(model, cfg.optimizer, 'host');
  try {
    if (resumed) await updater.restore(resumed.optimizer);
  } catch (err) {
    updater.dispose();
    model.dispose();
    throw err;
  }
  return {
    catalogue,
    items,
    itemsPerBatch: P,
    stepsPerEpoch: perEpoch,
    shards: o.shards,
    totalSteps,
    arch,
    jobKey,
    store,
    resumed,
    firstStep: resumed?.state.nextStep ?? 0,
    runId: resumed?.state.runId ?? o.runId ?? o.newRunId(),
    engine,
    model,
    updater,
    dispose() {
      updater.dispose();
      model.dispose();
      store?.release();
    },
  };
}

/** How a run's steps are computed and reported (the fleet's or the single process's). */
export interface RunParts {
  executor: StepExecutor;
  /** Published after every applied step (the fleet downloads it); none in a single process. */
  weights?: ModelWeightSource;
  sink: StepSink;
  control: RunControl;
  evaluate: boolean;
  evalEvery: number;
  checkpointEvery: number;
  onEvaluation?(phase: 'before' | 'after', results: EvaluationResult[]): void;
  beforeStep?(step: number, ctx: StepContext): Promise<void>;
  abortReason?(): string | undefined;
  /** After the loop, before the final evaluation: tell workers it is over, close transports. */
  afterLoop?(end: { interrupted: boolean; stoppedByOperator: boolean; failed: boolean; steps: number }): Promise<void>;
  /** A failed run: the error and the step it failed at (NATS run_failed). */
  onFailure?(step: number, err: Error): void;
  /** The round a checkpoint records. */
  round(): number;
}

export interface RunOutcome {
  stepsRun: number;
  nextStep: number;
  losses: number[];
  reports: StepReport[];
  before: EvaluationResult[];
  after: EvaluationResult[];
  seconds: number;
  checkpoint?: string;
  /** Interrupted (SIGTERM) or stopped by an operator. */
  stopped: boolean;
}

/** Evaluation before, the loop, evaluation after, the final checkpoint. */
export async function runJob(job: RunJob, cfg: TrainConfig, parts: RunParts, log: Logger): Promise<RunOutcome> {
  const { model, catalogue, store } = job;
  const evalOpts = { masks: cfg.evalMasks, batchSize: cfg.evalBatch, conv: job.engine.conv };
  let lastEvaluation: { nextStep: number; recallAt1: number } | undefined;
  // A resumed run's first checkpoint is already on disk: saving it again (a SIGTERM before the
  // first step) would delete and rewrite the newest good checkpoint for nothing.
  let lastSaved = job.resumed ? job.firstStep : -1;
  const saveCheckpoint = async (nextStep: number, reason: string, loss: number | null) => {
    if (!store || lastSaved === nextStep) return undefined;
    const state = {
      runId: job.runId,
      round: parts.round(),
      nextStep,
      epoch: Math.floor(nextStep / job.stepsPerEpoch),
      seed: cfg.seed,
      config: job.jobKey,
    };
    const recallAt1 = lastEvaluation?.nextStep === nextStep ? lastEvaluation.recallAt1 : null;
    const saved = store.save(
      await captureCheckpoint(model, job.updater, catalogue.categories, state, { loss, recall_at_1: recallAt1 }),
    );
    lastSaved = nextStep;
    parts.sink.checkpoint({ dir: saved.dir, step: nextStep, reason, bytes: saved.bytes, seconds: saved.seconds });
    return saved.dir;
  };

  const started = performance.now();
  const before = parts.evaluate ? await evaluateRetrieval(model, catalogue, evalOpts) : [];
  if (parts.evaluate) parts.onEvaluation?.('before', before);
  // Every mask's result goes to the sinks too (run history, recall gauges, NATS): `tricaps report`
  // then shows the evaluations `train` runs before and after, not only --eval-every's.
  for (const r of before) parts.sink.evaluation(job.firstStep, r);
  const ctx: StepContext = {
    cfg,
    items: job.items,
    itemsPerBatch: job.itemsPerBatch,
    stepsPerEpoch: job.stepsPerEpoch,
    shards: job.shards,
    model,
    updater: job.updater,
    weights: parts.weights,
    executor: parts.executor,
  };
  let loop: LoopResult;
  let interrupted = false;
  try {
    loop = await trainLoop(
      {
        firstStep: job.firstStep,
        totalSteps: job.totalSteps,
        maxMinutes: cfg.maxMinutes,
        evalEvery: parts.evalEvery,
        checkpointEvery: parts.checkpointEvery,
      },
      {
        runStep: (step) => runStep(ctx, step),
        beforeStep: parts.beforeStep && ((step) => parts.beforeStep!(step, ctx)),
        evaluate: async (nextStep) => {
          const [headline] = await evaluateRetrieval(model, catalogue, { ...evalOpts, masks: [cfg.evalMasks[0]] });
          lastEvaluation = { nextStep, recallAt1: headline.recall[1] };
          return headline;
        },
        checkpoint: async (nextStep, reason, loss) => {
          try {
            return await saveCheckpoint(nextStep, reason, loss);
          } catch (err) {
            // A periodic checkpoint that cannot be written does not end a run that can go on: say
            // so, keep training, and try again at the next one (the last good checkpoint stays).
            if (!(err instanceof CheckpointWriteError) || !reason.startsWith('every')) throw err;
            log.error(
              { step: nextStep, err: err.message },
              `${err.message}; training goes on, the next checkpoint will try again`,
            );
            return undefined;
          }
        },
        control: parts.control,
        sink: parts.sink,
        log,
        abortReason: parts.abortReason,
      },
    );
  } catch (err) {
    if (!(err instanceof StoppedError)) {
      parts.onFailure?.((err as { loopStep?: number }).loopStep ?? job.firstStep, err as Error);
      // The run did not end: workers are not told it is over (they wait for a restarted coordinator).
      await parts
        .afterLoop?.({ interrupted: false, stoppedByOperator: false, failed: true, steps: 0 })
        .catch(() => undefined);
      throw err;
    }
    interrupted = true;
    loop =
      err instanceof LoopStopped
        ? { nextStep: err.nextStep, reports: err.reports }
        : { nextStep: job.firstStep, reports: [] };
    log.warn({ step: loop.nextStep }, `stopped at step ${loop.nextStep} (the step in progress was not applied)`);
  }
  const stoppedByOperator = loop.stoppedBy === 'operator';
  const seconds = (performance.now() - started) / 1000;
  // Evaluate and save while the fleet is still served: workers hear the run is over only once its
  // final checkpoint is safely written.
  const end = { interrupted, stoppedByOperator, steps: loop.reports.length };
  let after: EvaluationResult[] = [];
  let checkpoint: string | undefined;
  try {
    after = parts.evaluate && !interrupted ? await evaluateRetrieval(model, catalogue, evalOpts) : [];
    if (parts.evaluate && !interrupted) parts.onEvaluation?.('after', after);
    for (const r of after) parts.sink.evaluation(loop.nextStep, r);
    if (after[0]) lastEvaluation = { nextStep: loop.nextStep, recallAt1: after[0].recall[1] };
    const lastLoss = loop.reports.at(-1)?.loss ?? null;
    checkpoint = store
      ? ((await saveCheckpoint(loop.nextStep, interrupted || stoppedByOperator ? 'stopped' : 'end of run', lastLoss)) ??
        join(store.root, stepDirName(loop.nextStep)))
      : undefined;
  } catch (err) {
    parts.onFailure?.(loop.nextStep, err as Error);
    await parts.afterLoop?.({ ...end, failed: true }).catch(() => undefined);
    throw err;
  }
  await parts.afterLoop?.({ ...end, failed: false });
  const stopped = interrupted || stoppedByOperator;
  return {
    stepsRun: loop.reports.length,
    nextStep: loop.nextStep,
    losses: loop.reports.map((r) => r.loss),
    reports: loop.reports,
    before,
    after,
    seconds,
    checkpoint,
    stopped,
  };
}
