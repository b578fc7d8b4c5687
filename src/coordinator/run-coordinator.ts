// Wiring of a coordinator run: open the data and the checkpoints, build the model and optimizer,
// serve the fleet (gRPC), metrics (HTTP) and NATS, then hand the step loop (train-loop.ts) its parts
// and, however the loop ends, save the final checkpoint, tell the workers and close everything.
// What one step does is step.ts; where its reports go is step-sink.ts.
import { randomBytes } from 'node:crypto';
import { catalogueFingerprint } from '../shared/data/open-catalogue.js';
import type { Engine } from '../shared/engine/engine.js';
import { UsageError } from '../shared/errors.js';
import type { EvaluationResult } from '../shared/eval/evaluate.js';
import type { FleetJob } from '../shared/fleet-job.js';
import type { Logger } from '../shared/log.js';
import { CoordinatorMetrics, countExchange, serveMetrics, type MetricsServer } from '../shared/metrics.js';
import type { TrainConfig } from '../shared/train-config.js';
import { TRICAPS_VERSION } from '../shared/version.js';
import { FleetCoordinator, FleetRunError } from './fleet-coordinator.js';
import { newRunId, type FleetConfig } from './fleet-config.js';
import { DEFAULT_GUARDS, parseListen, serveFleet, type FleetServer } from './fleet-service.js';
import { NatsBridge, type EventSink } from './nats-bridge.js';
import { RunControl } from './run-control.js';
import { openRun, runJob } from './run-training.js';
import { embedTrainItems, ModelWeightSource, type StepExecutor, type StepReport } from './step.js';
import { eventSink, fanOut, historySink, logSink, metricsSink, openRunHistory, type StepSink } from './step-sink.js';

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
  parseListen(fleet.listen); // a flag mistake is said before the data is read or an engine starts
  const shards = fleet.shards ?? fleet.minWorkers;
  const job = await openRun(
    cfg,
    {
      shards,
      shardsKey: shards,
      checkpointing: { resume: fleet.resume, every: fleet.checkpointEvery, keep: fleet.keepCheckpoints },
      runId: fleet.runId,
      newRunId,
      onPlanned: hooks.onPlanned,
    },
    log,
  );
  const { runId, engine, model, firstStep, resumed, catalogue } = job;
  const metrics = fleet.metricsPort !== undefined ? new CoordinatorMetrics(runId) : undefined;
  const events: EventSink & { close?(): Promise<void> } = fleet.nats
    ? NatsBridge.start(fleet.nats, runId, control, log, () => metrics?.natsDropped.inc(), fleet.natsAuth)
    : { publish: () => undefined };
  let server: FleetServer | undefined;
  let metricsServer: MetricsServer | undefined;
  let closeFleet: () => void = () => undefined;
  try {
    const weights = new ModelWeightSource(model);
    await weights.publish(firstStep);
    metrics?.info.set(
      { role: 'coordinator', run: runId, engine: engine.name, device: engine.device, version: TRICAPS_VERSION },
      1,
    );
    if (resumed) metrics?.resumes.inc();
    if (metrics) metrics.pausedNow = () => control.paused;
    metrics?.step.set(firstStep);

    // ---- the fleet ----
    const fleetJob: FleetJob = {
      train: { ...cfg, model: model.arch.config },
      catalogue: catalogueFingerprint(catalogue),
      shards,
    };
    const coord = new FleetCoordinator(
      {
        runId,
        // This process's own: ids of an earlier coordinator of the same run are never reused.
        memberIdSuffix: `-${randomBytes(2).toString('hex')}`,
        minWorkers: fleet.minWorkers,
        maxWorkers: fleet.maxWorkers,
        heartbeatIntervalMs: fleet.heartbeatIntervalMs,
        heartbeatTimeoutMs: fleet.heartbeatTimeoutMs,
        assignmentTimeoutMs: fleet.stepTimeoutMs,
        longPollMs: 5000,
        gradientDtype: fleet.gradientWire,
        configJson: JSON.stringify(fleetJob),
        embeddingDim: model.arch.outputShape[0] * model.arch.outputShape[1],
        maxGradientNormRatio: fleet.maxGradientNormRatio,
        exchange: fleet.exchange,
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
            metrics?.workerJoined(m.id);
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
    if (metrics) countExchange(metrics.exchangeBytes, coord.exchange);
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
      exchangeBytes: () => coord.exchange.total(),
      get round() {
        return coord.membership.round;
      },
    };

    // ---- where reports go ----
    const history = openRunHistory(cfg.checkpointDir, log);
    history?.append({
      type: 'run',
      runId,
      step: firstStep,
      resumedFrom: resumed?.dir ?? null,
      engine: engine.name,
      device: engine.device,
      shards,
    });
    let lastProgress = Date.now();
    const sink: StepSink = fanOut([
      logSink(log),
      { step: (r) => hooks.onStep?.(r) },
      metrics ? metricsSink(metrics, () => (lastProgress = Date.now())) : {},
      eventSink(events, fleet.natsStepInterval),
      history ? historySink(history) : {},
    ]);

    // ---- serve ----
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
        stepsPerEpoch: job.stepsPerEpoch,
        itemsPerBatch: job.itemsPerBatch,
        shards,
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
      totalSteps: job.totalSteps,
      resumedFrom: resumed?.dir ?? null,
      shards,
      minWorkers: fleet.minWorkers,
    });

    // ---- train ----
    const outcome = await runJob(
      job,
      cfg,
      {
        executor,
        weights,
        sink,
        control,
        evaluate: Boolean(opts.evaluate),
        evalEvery: fleet.evalEvery,
        checkpointEvery: fleet.checkpointEvery,
        onEvaluation: hooks.onEvaluation,
        round: () => coord.membership.round,
        abortReason: hooks.abortReason,
        beforeStep: async (step, ctx) => {
          if (fleet.hardNegativeEvery <= 0 || step % fleet.hardNegativeEvery !== 0) return;
          const t0 = performance.now();
          ctx.embeddings = await embedTrainItems(executor, job.items, step, Math.floor(step / job.stepsPerEpoch));
          const seconds = (performance.now() - t0) / 1000;
          log.info(
            { step, items: ctx.embeddings.size, seconds },
            `hard-negative plan refreshed at step ${step}: ${ctx.embeddings.size} items embedded in ${seconds.toFixed(2)} s`,
          );
        },
        onFailure: (step, err) => events.publish('run_failed', { step, error: err.message }),
        afterLoop: async ({ interrupted, stoppedByOperator, failed, steps }) => {
          if (!interrupted && !failed) {
            log.info(
              { run: runId, steps },
              `run ${runId} ${stoppedByOperator ? 'stopped' : 'complete'} after ${steps} steps; telling the workers`,
            );
            await coord.finish(fleet.finishTimeoutMs).catch(() => undefined);
          }
          coord.close();
          await server?.shutdown();
          server = undefined;
          await metricsServer?.close();
          metricsServer = undefined;
        },
      },
      log,
    ).catch((err: unknown) => {
      throw err instanceof FleetRunError ? new UsageError(err.message) : err;
    });
    events.publish('run_finished', {
      steps: outcome.nextStep,
      stopped: outcome.stopped,
      checkpoint: outcome.checkpoint ?? null,
      loss: outcome.losses.at(-1) ?? null,
    });
    return { runId, engine, ...outcome, lost: coord.lost };
  } finally {
    // However the run ends: nothing left listening or ticking, nothing left allocated.
    closeFleet();
    await server?.shutdown().catch(() => undefined);
    await metricsServer?.close().catch(() => undefined);
    await events.close?.();
    job.dispose();
  }
}
