// Wiring of a coordinator run: open the data and the checkpoints, build the model and optimizer,
// serve the fleet (gRPC), metrics (HTTP) and NATS, then hand the step loop (train-loop.ts) its parts
// and, however the loop ends, save the final checkpoint, tell the workers and close everything.
// What one step does is step.ts; where its reports go is step-sink.ts.
import { join } from 'node:path';
import { trainItems, type Catalogue } from '../shared/data/catalogue.js';
import { catalogueFingerprint, openTrainingCatalogue } from '../shared/data/open-catalogue.js';
import { stepsPerEpoch } from '../shared/data/pk-sampler.js';
import { initEngine, type Engine } from '../shared/engine/engine.js';
import { evaluateRetrieval, type EvaluationResult } from '../shared/eval/evaluate.js';
import type { FleetJob } from '../shared/fleet-job.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { createModelState } from '../shared/model/params.js';
import { stepDirName } from '../shared/checkpoint-format.js';
import { captureCheckpoint, openCheckpoints } from './checkpoint.js';
import { HISTORY_FILE, RunHistory } from '../shared/run-history.js';
import { NatsBridge, type EventSink } from './nats-bridge.js';
import { RunControl } from './run-control.js';
import { CoordinatorMetrics, serveMetrics, type MetricsServer } from '../shared/metrics.js';
import { TRICAPS_VERSION } from '../shared/version.js';
import { itemsPerBatch, plannedSteps, type TrainConfig } from '../shared/train-config.js';
import { UsageError } from '../shared/errors.js';
import { FleetCoordinator, FleetRunError, StoppedError } from './fleet-coordinator.js';
import { newRunId, type FleetConfig } from './fleet-config.js';
import { DEFAULT_GUARDS, serveFleet, type FleetServer } from './fleet-service.js';
import { ParameterUpdater } from './optimizer.js';
import {
  embedTrainItems,
  ModelWeightSource,
  runStep,
  type StepContext,
  type StepExecutor,
  type StepReport,
} from './step.js';
import {
  eventSink,
  fanOut,
  historySink,
  logSink,
  metricsSink,
  type SavedCheckpoint,
  type StepSink,
} from './step-sink.js';
import { LoopStopped, trainLoop, type LoopResult } from './train-loop.js';

export { ModelWeightSource, outsideComputeShare } from './step.js';
/** The report of one applied step (the name the CLI and benchmarks know). */
export type FleetStepReport = StepReport;

export interface CoordinatorHooks {
  onListening?(address: string, runId: string): void | Promise<void>;
  /** The number of steps the run will take (--steps, or fewer with --epochs). */
  onPlanned?(totalSteps: number): void;
  onStep?(report: FleetStepReport): void;
  onEvaluation?(phase: 'before' | 'after', results: EvaluationResult[]): void;
  /** Polled between steps: a reason to stop the run early (local fleet lost its processes). */
  abortReason?(): string | undefined;
}

export interface CoordinatorResult {
  runId: string;
  engine: Engine;
  stepsRun: number;
  losses: number[];
  reports: FleetStepReport[];
  before: EvaluationResult[];
  after: EvaluationResult[];
  seconds: number;
  checkpoint?: string;
  lost: FleetCoordinator['lost'];
  stopped: boolean;
}

export interface CoordinatorRun {
  /** Stops the run now (SIGTERM): the step in progress is not applied; a paused run stops too. */
  stop(): void;
  done: Promise<CoordinatorResult>;
}

export function startCoordinator(
  cfg: TrainConfig,
  fleet: FleetConfig,
  log: Logger,
  hooks: CoordinatorHooks = {},
  opts: { evaluate?: boolean } = {},
): CoordinatorRun {
  let coordinator: FleetCoordinator | undefined;
  const control = new RunControl(fleet.natsControlToken);
  const done = runCoordinator(cfg, fleet, log, hooks, opts, control, (c) => {
    coordinator = c;
    if (control.interrupted) c.close();
  });
  return {
    stop() {
      control.interrupt(); // ends a pause (the loop waits in the control, not in the fleet)
      coordinator?.close(); // ends a step in progress
    },
    done,
  };
}

async function runCoordinator(
  cfg: TrainConfig,
  fleet: FleetConfig,
  log: Logger,
  hooks: CoordinatorHooks,
  opts: { evaluate?: boolean },
  control: RunControl,
  expose: (c: FleetCoordinator) => void,
): Promise<CoordinatorResult> {
  // ---- the job: data, plan, checkpoints (usage errors before anything starts) ----
  const catalogue: Catalogue = await openTrainingCatalogue(cfg.data);
  const items = trainItems(catalogue);
  const P = itemsPerBatch(cfg);
  const perEpoch = stepsPerEpoch([...items.values()].filter((ids) => ids.length >= 2).length, P);
  if (perEpoch === 0) {
    throw new UsageError(
      `${catalogue.name} has ${items.size} train items; a batch of ${cfg.batchTriplets} triplets needs ${P}. Use more --items or fewer --batch-triplets`,
    );
  }
  const shardCount = fleet.shards ?? fleet.minWorkers;
  if (P < 2 * shardCount) {
    throw new UsageError(
      `a batch of ${P} items cannot be split into ${shardCount} mining shards of at least 2 items; use fewer --shards (or --min-workers) or more --batch-triplets`,
    );
  }
  const totalSteps = plannedSteps(cfg, perEpoch);
  hooks.onPlanned?.(totalSteps);
  const arch = buildArchitecture({ ...cfg.model, categories: catalogue.categories.length });
  // What must not change across a resume (the sampler cursor means nothing for another batch or data).
  const jobKey = {
    model: arch.config,
    seed: cfg.seed,
    batchTriplets: cfg.batchTriplets,
    imagesPerItem: cfg.imagesPerItem,
    data: cfg.data,
    shards: shardCount,
    mining: cfg.mining,
  };
  const { store, resumed } = openCheckpoints(
    cfg.checkpointDir,
    { resume: fleet.resume, every: fleet.checkpointEvery, keep: fleet.keepCheckpoints },
    jobKey,
    log,
  );
  if (resumed && fleet.runId && fleet.runId !== resumed.state.runId) {
    throw new UsageError(
      `--run-id ${fleet.runId}, but ${resumed.dir} belongs to run ${resumed.state.runId}; drop --run-id to continue that run`,
    );
  }
  const firstStep = resumed?.state.nextStep ?? 0;
  const runId = resumed?.state.runId ?? fleet.runId ?? newRunId();

  // ---- the model and its optimizer ----
  const engine = await initEngine(cfg.engine, log);
  const model = createModelState(arch, cfg.seed, resumed?.weights.values);
  const updater = new ParameterUpdater(model, cfg.optimizer);
  const metrics = fleet.metricsPort !== undefined ? new CoordinatorMetrics() : undefined;
  const events: EventSink & { close?(): Promise<void> } = fleet.nats
    ? NatsBridge.start(fleet.nats, runId, control, log, () => metrics?.natsDropped.inc(), fleet.natsAuth)
    : { publish: () => undefined };
  let server: FleetServer | undefined;
  let metricsServer: MetricsServer | undefined;
  let closeFleet: () => void = () => undefined;
  try {
    if (resumed) await updater.restore(resumed.optimizer);
    const weights = new ModelWeightSource(model);
    await weights.publish(firstStep);
    metrics?.info.set(
      { role: 'coordinator', run: runId, engine: engine.name, device: engine.device, version: TRICAPS_VERSION },
      1,
    );
    if (resumed) metrics?.resumes.inc();
    metrics?.step.set(firstStep);

    // ---- the fleet ----
    const job: FleetJob = {
      train: { ...cfg, model: model.arch.config },
      catalogue: catalogueFingerprint(catalogue),
      shards: shardCount,
    };
    const coord = new FleetCoordinator(
      {
        runId,
        minWorkers: fleet.minWorkers,
        maxWorkers: fleet.maxWorkers,
        heartbeatIntervalMs: fleet.heartbeatIntervalMs,
        heartbeatTimeoutMs: fleet.heartbeatTimeoutMs,
        assignmentTimeoutMs: fleet.stepTimeoutMs,
        longPollMs: 5000,
        gradientDtype: fleet.gradientWire,
        configJson: JSON.stringify(job),
        embeddingDim: model.arch.outputShape[0] * model.arch.outputShape[1],
        maxGradientNormRatio: fleet.maxGradientNormRatio,
        listener: {
          rejected: (m, kind) => metrics?.rejectedUpdates.inc({ reason: kind, worker: m.id }),
          joined: (m, workers, round) => {
            events.publish('worker_joined', {
              worker: m.id,
              name: m.name,
              engine: m.engine,
              device: m.device,
              workers,
              round,
            });
            metrics?.joins.inc();
            metrics?.worldSize.set(workers);
            metrics?.round.set(round);
          },
          lost: (m, kind, reason, workers, round) => {
            events.publish('worker_lost', { worker: m.id, name: m.name, kind, reason, workers, round });
            metrics?.losses.inc({ reason: kind });
            metrics?.worldSize.set(workers);
            metrics?.round.set(round);
          },
        },
      },
      weights,
      log,
    );
    closeFleet = () => coord.close();
    expose(coord);
    if (resumed) {
      coord.membership.round = resumed.state.round;
      log.info(
        { run: runId, checkpoint: resumed.dir, step: firstStep, round: resumed.state.round },
        `resuming run ${runId} from ${resumed.dir} at step ${firstStep}`,
      );
    }
    const executor: StepExecutor = {
      execute: (work) => coord.execute(work),
      release: (arrays) => coord.buffers.release(arrays),
      get round() {
        return coord.membership.round;
      },
    };

    // ---- where reports go ----
    const history = cfg.checkpointDir ? new RunHistory(join(cfg.checkpointDir, HISTORY_FILE)) : undefined;
    history?.append({
      type: 'run',
      runId,
      step: firstStep,
      resumedFrom: resumed?.dir ?? null,
      engine: engine.name,
      device: engine.device,
      shards: shardCount,
    });
    let lastProgress = Date.now();
    const sink: StepSink = fanOut([
      logSink(log),
      { step: (r) => hooks.onStep?.(r) },
      metrics ? metricsSink(metrics, () => (lastProgress = Date.now())) : {},
      eventSink(events, fleet.natsStepInterval),
      history ? historySink(history) : {},
    ]);
    let lastEvaluation: { nextStep: number; recallAt1: number } | undefined;
    let lastSaved = -1;
    const saveCheckpoint = async (nextStep: number, reason: string, loss: number | null) => {
      if (!store || lastSaved === nextStep) return undefined;
      const captured = await captureCheckpoint(
        model,
        updater,
        catalogue.categories,
        {
          runId,
          round: coord.membership.round,
          nextStep,
          epoch: Math.floor(nextStep / perEpoch),
          seed: cfg.seed,
          config: jobKey,
        },
        { loss, recall_at_1: lastEvaluation?.nextStep === nextStep ? lastEvaluation.recallAt1 : null },
      );
      const saved = store.save(captured);
      lastSaved = nextStep;
      const report: SavedCheckpoint = {
        dir: saved.dir,
        step: nextStep,
        reason,
        bytes: saved.bytes,
        seconds: saved.seconds,
      };
      sink.checkpoint(report);
      return saved.dir;
    };
    const evalOpts = { masks: cfg.evalMasks, batchSize: cfg.evalBatch, conv: engine.conv };

    // ---- serve, run the loop, finish ----
    server = await serveFleet(
      coord,
      fleet.listen,
      fleet.security,
      { ...DEFAULT_GUARDS, uploadTimeoutMs: fleet.uploadTimeoutMs },
      log,
    );
    coord.start();
    if (metrics) {
      // Stalled = workers present, not paused by an operator, and no step applied for --stall-seconds.
      metricsServer = await serveMetrics(metrics.registry, fleet.metricsPort!, '0.0.0.0', () => {
        const idle = (Date.now() - lastProgress) / 1000;
        if (fleet.stallSeconds > 0 && idle > fleet.stallSeconds && coord.membership.size > 0 && !control.paused) {
          return {
            ok: false,
            reason: `no step applied for ${idle.toFixed(0)} s with ${coord.membership.size} workers present (--stall-seconds ${fleet.stallSeconds})`,
          };
        }
        return { ok: true };
      });
      log.info({ metricsPort: metricsServer.port }, `metrics at http://0.0.0.0:${metricsServer.port}/metrics`);
    }
    log.info(
      {
        run: runId,
        address: server.address,
        catalogue: catalogue.name,
        stepsPerEpoch: perEpoch,
        itemsPerBatch: P,
        shards: shardCount,
        minWorkers: fleet.minWorkers,
        maxWorkers: fleet.maxWorkers,
        wire: fleet.gradientWire,
      },
      `coordinator of run ${runId} listening on ${server.address}`,
    );
    await hooks.onListening?.(server.address, runId);
    events.publish('run_started', {
      address: server.address,
      step: firstStep,
      totalSteps,
      resumedFrom: resumed?.dir ?? null,
      shards: shardCount,
      minWorkers: fleet.minWorkers,
    });
    const started = performance.now();
    const before = opts.evaluate ? await evaluateRetrieval(model, catalogue, evalOpts) : [];
    if (opts.evaluate) hooks.onEvaluation?.('before', before);

    const ctx: StepContext = {
      cfg,
      items,
      itemsPerBatch: P,
      stepsPerEpoch: perEpoch,
      shards: shardCount,
      model,
      updater,
      weights,
      executor,
    };
    let loop: LoopResult | undefined;
    let stopped = false;
    try {
      loop = await trainLoop(
        {
          firstStep,
          totalSteps,
          maxMinutes: cfg.maxMinutes,
          evalEvery: fleet.evalEvery,
          checkpointEvery: fleet.checkpointEvery,
        },
        {
          runStep: (step) => runStep(ctx, step),
          beforeStep: async (step) => {
            if (fleet.hardNegativeEvery > 0 && step % fleet.hardNegativeEvery === 0) {
              const t0 = performance.now();
              ctx.embeddings = await embedTrainItems(executor, items, step, Math.floor(step / perEpoch));
              const seconds = (performance.now() - t0) / 1000;
              log.info(
                { step, items: ctx.embeddings.size, seconds },
                `hard-negative plan refreshed at step ${step}: ${ctx.embeddings.size} items embedded in ${seconds.toFixed(2)} s`,
              );
            }
          },
          evaluate: async (nextStep) => {
            const [headline] = await evaluateRetrieval(model, catalogue, { ...evalOpts, masks: [cfg.evalMasks[0]] });
            lastEvaluation = { nextStep, recallAt1: headline.recall[1] };
            return headline;
          },
          checkpoint: saveCheckpoint,
          control,
          sink,
          log,
          abortReason: hooks.abortReason,
        },
      );
    } catch (err) {
      if (!(err instanceof StoppedError)) {
        events.publish('run_failed', {
          step: (err as { loopStep?: number }).loopStep ?? firstStep,
          error: (err as Error).message,
        });
        throw err instanceof FleetRunError ? new UsageError(err.message) : err;
      }
      stopped = true;
      loop = {
        nextStep: err instanceof LoopStopped ? err.nextStep : firstStep,
        reports: err instanceof LoopStopped ? err.reports : [],
      };
      log.warn({ step: loop.nextStep }, `stopped at step ${loop.nextStep} (the step in progress was not applied)`);
    } finally {
      if (!stopped) {
        const steps = loop?.reports.length ?? 0;
        log.info(
          { run: runId, steps },
          `run ${runId} ${loop?.stoppedBy === 'operator' ? 'stopped' : 'complete'} after ${steps} steps; telling the workers`,
        );
        await coord.finish(fleet.finishTimeoutMs).catch(() => undefined);
      }
      coord.close();
      await server.shutdown();
      server = undefined;
      await metricsServer?.close();
      metricsServer = undefined;
    }
    const seconds = (performance.now() - started) / 1000;
    const after = opts.evaluate && !stopped ? await evaluateRetrieval(model, catalogue, evalOpts) : [];
    if (opts.evaluate && !stopped) hooks.onEvaluation?.('after', after);
    const { nextStep, reports } = loop;
    const halted = stopped || loop.stoppedBy === 'operator';
    const lastLoss = reports.at(-1)?.loss ?? null;
    const checkpoint = store
      ? ((await saveCheckpoint(nextStep, halted ? 'stopped' : 'end of run', lastLoss)) ??
        join(store.root, stepDirName(nextStep)))
      : undefined;
    events.publish('run_finished', {
      steps: nextStep,
      stopped: halted,
      checkpoint: checkpoint ?? null,
      loss: lastLoss,
    });
    return {
      runId,
      engine,
      stepsRun: reports.length,
      losses: reports.map((r) => r.loss),
      reports,
      before,
      after,
      seconds,
      checkpoint,
      lost: coord.lost,
      stopped: halted,
    };
  } finally {
    // However the run ends: nothing left listening or ticking, nothing left allocated.
    closeFleet();
    await server?.shutdown().catch(() => undefined);
    await metricsServer?.close().catch(() => undefined);
    await events.close?.();
    updater.dispose();
    model.dispose();
  }
}
