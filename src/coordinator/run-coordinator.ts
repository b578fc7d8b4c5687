// The coordinator's training loop, top to bottom: open the data index, build the model and
// optimizer, serve the fleet, then per step — sample the PK batch, plan its mining shards
// (optionally grouping confusable items), run them over the workers, average the shard gradients
// by contributing triplets, apply Adam — and finally save the weights and tell the workers the run
// is over.
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { trainItems, type Catalogue } from '../shared/data/catalogue.js';
import { catalogueFingerprint, openTrainingCatalogue } from '../shared/data/open-catalogue.js';
import { samplePkBatch, stepsPerEpoch } from '../shared/data/pk-sampler.js';
import { initEngine, type Engine } from '../shared/engine/engine.js';
import { evaluateRetrieval, type EvaluationResult } from '../shared/eval/evaluate.js';
import type { FleetJob } from '../shared/fleet-job.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { createModelState, type ModelState } from '../shared/model/params.js';
import { weightedAverage } from '../shared/plan/average.js';
import { confusableAffinity } from '../shared/plan/hard-negatives.js';
import { planShards, type PlannedShard } from '../shared/plan/step-plan.js';
import { stepDirName } from '../shared/checkpoint-format.js';
import { hashInts } from '../shared/rng.js';
import { median } from '../shared/stats.js';
import { captureCheckpoint, openCheckpoints } from './checkpoint.js';
import { HISTORY_FILE, RunHistory } from '../shared/run-history.js';
import { NatsBridge, type EventSink } from './nats-bridge.js';
import { RunControl } from './run-control.js';
import { CoordinatorMetrics, serveMetrics, type MetricsServer } from '../shared/metrics.js';
import { TRICAPS_VERSION } from '../shared/version.js';
import { encodeTensor, type EncodedChunk } from '../shared/tensor-codec.js';
import { itemsPerBatch, plannedSteps, type TrainConfig } from '../shared/train-config.js';
import { UsageError } from '../shared/errors.js';
import {
  FleetCoordinator,
  FleetRunError,
  StoppedError,
  type EmbedResult,
  type TensorSpec,
  type TrainResult,
  type WeightSource,
} from './fleet-coordinator.js';
import type { FleetConfig } from './fleet-config.js';
import { newRunId } from './fleet-config.js';
import { DEFAULT_GUARDS, serveFleet, type FleetServer } from './fleet-service.js';
import { ParameterUpdater } from './optimizer.js';
import { StepWork } from './step-work.js';

/** The model's parameters as the fleet sees them: versioned, encoded once per version. */
export class ModelWeightSource implements WeightSource {
  version = 0;
  readonly gradientSpecs: TensorSpec[];
  readonly statSpecs: TensorSpec[];
  private published: { version: number; chunks: EncodedChunk[] } | undefined;

  constructor(private readonly model: ModelState) {
    this.gradientSpecs = model.arch.params.filter((p) => p.trainable).map((p) => ({ name: p.name, shape: p.shape }));
    this.statSpecs = model.arch.params.filter((p) => !p.trainable).map((p) => ({ name: p.name, shape: p.shape }));
  }

  /**
   * Reads the model's current values (one awaited read of all of them, concatenated on the device:
   * no synchronous read, so the coordinator may run on any engine) and makes them `version`.
   */
  async publish(version: number): Promise<void> {
    const entries = [...this.model.trainable, ...this.model.buffers];
    const flat = tf.tidy(() => tf.concat(entries.map(([, v]) => tf.reshape(v, [-1]))));
    // The array is ours: the tensor it came from is disposed now, and no backend reuses its storage.
    const host = (await flat.data()) as Float32Array;
    flat.dispose();
    const chunks: EncodedChunk[] = [];
    let offset = 0;
    for (const [name, v] of entries) {
      chunks.push(
        ...encodeTensor(name, host.subarray(offset, offset + v.size), v.shape, 'float32', undefined, { copy: false }),
      );
      offset += v.size;
    }
    this.published = { version, chunks };
    this.version = version;
  }

  chunks(): EncodedChunk[] {
    if (this.published?.version !== this.version) throw new Error(`weights version ${this.version} was not published`);
    return this.published.chunks;
  }
}

export interface FleetStepReport {
  step: number;
  epoch: number;
  loss: number;
  gradientNorm: number;
  triplets: number;
  activeTriplets: number;
  workers: number;
  round: number;
  /** Wall time of the step at the coordinator: plan to optimizer done. */
  seconds: number;
  /** The slowest worker's gradient computation (the step's critical path, with its data loading). */
  workerComputeSeconds: number;
  /** That worker's data loading. */
  workerDataSeconds: number;
  averageSeconds: number;
  optimizerSeconds: number;
  /** Everything else: weights and gradients on the wire, decoding, waiting for stragglers. */
  exchangeSeconds: number;
  images: number;
  imagesPerSecond: number;
  learningRate: number;
}

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

/** Share of a step spent outside the slowest worker's data loading and compute. */
export function outsideComputeShare(r: FleetStepReport): number {
  return (r.seconds - r.workerComputeSeconds - r.workerDataSeconds) / r.seconds;
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
  const catalogue: Catalogue = await openTrainingCatalogue(cfg.data);
  const items = trainItems(catalogue);
  const P = itemsPerBatch(cfg);
  const perEpoch = stepsPerEpoch([...items.values()].filter((ids) => ids.length >= 2).length, P);
  if (perEpoch === 0)
    throw new UsageError(
      `${catalogue.name} has ${items.size} train items; a batch of ${cfg.batchTriplets} triplets needs ${P}. Use more --items or fewer --batch-triplets`,
    );
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
  if (resumed && fleet.runId && fleet.runId !== resumed.state.runId)
    throw new UsageError(
      `--run-id ${fleet.runId}, but ${resumed.dir} belongs to run ${resumed.state.runId}; drop --run-id to continue that run`,
    );
  const engine = await initEngine(cfg.engine, log);
  const model = createModelState(arch, cfg.seed, resumed?.weights.values);
  const updater = new ParameterUpdater(model, cfg.optimizer);
  if (resumed) await updater.restore(resumed.optimizer);
  const weights = new ModelWeightSource(model);
  await weights.publish(resumed?.state.nextStep ?? 0);
  const runId = resumed?.state.runId ?? fleet.runId ?? newRunId();
  const metrics = fleet.metricsPort !== undefined ? new CoordinatorMetrics() : undefined;
  metrics?.info.set(
    { role: 'coordinator', run: runId, engine: engine.name, device: engine.device, version: TRICAPS_VERSION },
    1,
  );
  if (resumed) metrics?.resumes.inc();
  const events: EventSink = fleet.nats
    ? NatsBridge.start(fleet.nats, runId, control, log, () => metrics?.natsDropped.inc(), fleet.natsAuth)
    : { publish: () => undefined };
  metrics?.step.set(resumed?.state.nextStep ?? 0);
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
  expose(coord);
  if (resumed) {
    coord.membership.round = resumed.state.round;
    log.info(
      { run: runId, checkpoint: resumed.dir, step: resumed.state.nextStep, round: resumed.state.round },
      `resuming run ${runId} from ${resumed.dir} at step ${resumed.state.nextStep}`,
    );
  }
  let lastEvaluation: { nextStep: number; recallAt1: number } | undefined;
  // The run's history for `tricaps report` (appended across resumes).
  const history = cfg.checkpointDir ? new RunHistory(join(cfg.checkpointDir, HISTORY_FILE)) : undefined;
  history?.append({
    type: 'run',
    runId,
    step: resumed?.state.nextStep ?? 0,
    resumedFrom: resumed?.dir ?? null,
    engine: engine.name,
    device: engine.device,
    shards: shardCount,
  });
  let lastSaved = -1;
  const saveCheckpoint = async (nextStep: number, reason: string, loss: number | null) => {
    if (!store || lastSaved === nextStep) return undefined;
    const saved = store.save(
      await captureCheckpoint(
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
        {
          loss,
          recall_at_1: lastEvaluation?.nextStep === nextStep ? lastEvaluation.recallAt1 : null,
        },
      ),
    );
    lastSaved = nextStep;
    metrics?.checkpointDuration.observe(saved.seconds);
    metrics?.checkpointBytes.set(saved.bytes);
    metrics?.checkpointLast.set(Date.now() / 1000);
    events.publish('checkpoint_saved', {
      step: nextStep,
      dir: saved.dir,
      reason,
      bytes: saved.bytes,
      seconds: saved.seconds,
    });
    log.info(
      { checkpoint: saved.dir, step: nextStep, reason, bytes: saved.bytes, seconds: saved.seconds },
      `checkpoint ${saved.dir} saved (${reason}) in ${saved.seconds.toFixed(2)} s`,
    );
    return saved.dir;
  };
  let server: FleetServer | undefined;
  let metricsServer: MetricsServer | undefined;
  let progressTick: () => void = () => undefined;
  const reports: FleetStepReport[] = [];
  let before: EvaluationResult[] = [];
  let after: EvaluationResult[] = [];
  let stopped = false;
  let operatorStop = false;
  let step = resumed?.state.nextStep ?? 0;
  const started = performance.now();
  try {
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
      let lastProgress = Date.now();
      progressTick = () => (lastProgress = Date.now());
      metricsServer = await serveMetrics(metrics.registry, fleet.metricsPort!, '0.0.0.0', () => {
        const idle = (Date.now() - lastProgress) / 1000;
        if (fleet.stallSeconds > 0 && idle > fleet.stallSeconds && coord.membership.size > 0 && !control.paused)
          return {
            ok: false,
            reason: `no step applied for ${idle.toFixed(0)} s with ${coord.membership.size} workers present (--stall-seconds ${fleet.stallSeconds})`,
          };
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
      step,
      totalSteps,
      resumedFrom: resumed?.dir ?? null,
      shards: shardCount,
      minWorkers: fleet.minWorkers,
    });
    const evalOpts = { masks: cfg.evalMasks, batchSize: cfg.evalBatch, conv: engine.conv };
    if (opts.evaluate) {
      before = await evaluateRetrieval(model, catalogue, evalOpts);
      hooks.onEvaluation?.('before', before);
    }
    let embeddings: Map<number, Float32Array> | undefined;
    let averaged: Map<string, Float32Array> | undefined;
    for (; step < totalSteps; step++) {
      const abort = hooks.abortReason?.();
      if (abort) throw new Error(abort);
      await control.atStepBoundary(step, (reason) => saveCheckpoint(step, reason, reports.at(-1)?.loss ?? null));
      if (control.interrupted) throw new StoppedError();
      if (control.stopRequested) {
        log.warn({ step }, `stopping before step ${step} as asked`);
        operatorStop = true;
        break;
      }
      if (cfg.maxMinutes > 0 && performance.now() - started > cfg.maxMinutes * 60_000) {
        log.warn(
          { step, maxMinutes: cfg.maxMinutes },
          `stopping after ${step} steps: --max-minutes ${cfg.maxMinutes} reached`,
        );
        break;
      }
      const epoch = Math.floor(step / perEpoch);
      if (fleet.hardNegativeEvery > 0 && step % fleet.hardNegativeEvery === 0)
        embeddings = await refreshHardNegatives(coord, items, step, epoch, log);
      const batch = samplePkBatch({
        seed: cfg.seed,
        epoch,
        step: step % perEpoch,
        itemsPerBatch: P,
        imagesPerItem: cfg.imagesPerItem,
        items,
      });
      const affinity = embeddings ? confusableAffinity(batch.itemIds, embeddings, shardCount) : undefined;
      const work = new StepWork<TrainResult>('train', step, epoch, planShards(batch, shardCount, affinity));
      const t0 = performance.now();
      await coord.execute(work);
      const t1 = performance.now();
      const results = work.results.map((r) => r.result);
      const triplets = results.reduce((s, r) => s + r.triplets, 0);
      const loss = triplets ? results.reduce((s, r) => s + r.loss * r.triplets, 0) / triplets : Number.NaN;
      const releaseBuffers = () => {
        for (const r of results) coord.buffers.release([...r.grads.values(), ...r.bnStats.values()]);
      };
      if (triplets === 0) {
        log.warn({ step }, `step ${step}: no shard found a triplet; no update`);
        releaseBuffers();
        continue;
      }
      // Shard order, not arrival order: the same fleet gives bit-identical averages every run.
      const ordered = [...work.results].sort((a, b) => a.units[0] - b.units[0]).map((r) => r.result);
      const avg = weightedAverage(
        ordered.map((r) => ({ triplets: r.triplets, grads: r.grads })),
        averaged,
      );
      averaged = avg.grads;
      let sq = 0;
      for (const g of avg.grads.values()) for (let i = 0; i < g.length; i++) sq += g[i] * g[i];
      // Each result's statistics are the mean over its shards: weight it by its shard count. Fresh
      // arrays (they are small): the BatchNorm buffers are assigned tensors that may keep them.
      const stats = weightedAverage(ordered.map((r) => ({ triplets: r.shards, grads: r.bnStats }))).grads;
      const t2 = performance.now();
      const gradTensors = new Map([...avg.grads].map(([n, g]) => [n, tf.tensor(g, model.trainable.get(n)!.shape)]));
      const statTensors = new Map([...stats].map(([n, s]) => [n, tf.tensor(s, model.buffers.get(n)!.shape)]));
      updater.apply(gradTensors, statTensors, epoch);
      tf.dispose([...gradTensors.values(), ...statTensors.values()]);
      await weights.publish(weights.version + 1);
      releaseBuffers();
      const t3 = performance.now();
      const slowest = results.reduce(
        (m, r) => (r.dataSeconds + r.computeSeconds > m.dataSeconds + m.computeSeconds ? r : m),
        results[0],
      );
      const seconds = (t3 - t0) / 1000;
      const images = work.units.reduce((s, u) => s + u.imageIds.length, 0);
      const report: FleetStepReport = {
        step,
        epoch,
        loss,
        gradientNorm: Math.sqrt(sq),
        triplets,
        activeTriplets: results.reduce((s, r) => s + r.activeTriplets, 0),
        workers: new Set(work.results.map((r) => r.workerId)).size,
        round: coord.membership.round,
        seconds,
        workerComputeSeconds: slowest.computeSeconds,
        workerDataSeconds: slowest.dataSeconds,
        averageSeconds: (t2 - t1) / 1000,
        optimizerSeconds: (t3 - t2) / 1000,
        exchangeSeconds: Math.max(0, (t1 - t0) / 1000 - slowest.computeSeconds - slowest.dataSeconds),
        images,
        imagesPerSecond: images / seconds,
        learningRate: updater.learningRateAt(epoch),
      };
      reports.push(report);
      log.info(
        {
          step,
          epoch,
          batch: hashInts(0, ...batch.imageIds),
          loss,
          grad_norm: Math.sqrt(sq),
          triplets,
          shards: work.units.length,
          shards_computed: results.reduce((n, r) => n + r.shards, 0),
          workers: report.workers,
          round: report.round,
          seconds,
          compute_s: report.workerComputeSeconds,
          data_s: report.workerDataSeconds,
          exchange_s: report.exchangeSeconds,
          average_s: report.averageSeconds,
          optimizer_s: report.optimizerSeconds,
          images_per_s: report.imagesPerSecond,
        },
        `step ${step} loss ${loss.toFixed(4)} workers ${report.workers} ${seconds.toFixed(2)} s`,
      );
      hooks.onStep?.(report);
      if (metrics) recordStep(metrics, report, work.results);
      progressTick();
      history?.append({
        type: 'step',
        step,
        epoch,
        loss,
        gradientNorm: report.gradientNorm,
        triplets,
        activeTriplets: report.activeTriplets,
        seconds,
        phases: {
          data: report.workerDataSeconds,
          compute: report.workerComputeSeconds,
          exchange: report.exchangeSeconds,
          averaging: report.averageSeconds,
          optimizer: report.optimizerSeconds,
        },
        workers: work.results.map((r) => ({
          id: r.workerId,
          images: r.units.reduce((n, u) => n + work.units[u].imageIds.length, 0),
          dataSeconds: r.result.dataSeconds,
          computeSeconds: r.result.computeSeconds,
        })),
      });
      if ((step + 1) % fleet.natsStepInterval === 0) {
        events.publish('step_summary', {
          step: step + 1,
          epoch,
          loss,
          gradientNorm: report.gradientNorm,
          triplets,
          activeTriplets: report.activeTriplets,
          workers: report.workers,
          seconds,
          imagesPerSecond: report.imagesPerSecond,
        });
      }
      if (fleet.evalEvery > 0 && (step + 1) % fleet.evalEvery === 0) {
        const [headline] = await evaluateRetrieval(model, catalogue, {
          masks: [cfg.evalMasks[0]],
          batchSize: cfg.evalBatch,
          conv: engine.conv,
        });
        lastEvaluation = { nextStep: step + 1, recallAt1: headline.recall[1] };
        for (const [k, r] of Object.entries(headline.recall)) metrics?.recall.set({ k, mask: headline.mask }, r);
        events.publish('evaluation_done', {
          step: step + 1,
          mask: headline.mask,
          recall: headline.recall,
          mapAtR: headline.mapAtR,
        });
        history?.append({
          type: 'evaluation',
          step: step + 1,
          mask: headline.mask,
          recall: headline.recall,
          mapAtR: headline.mapAtR,
        });
        log.info(
          { step: step + 1, mask: headline.mask, recall: headline.recall, mapAtR: headline.mapAtR },
          `evaluation after ${step + 1} steps: R@1 ${(headline.recall[1] * 100).toFixed(1)}% (${headline.mask})`,
        );
      }
      if (fleet.checkpointEvery > 0 && (step + 1) % fleet.checkpointEvery === 0)
        await saveCheckpoint(step + 1, `every ${fleet.checkpointEvery} steps`, loss);
    }
  } catch (err) {
    if (!(err instanceof StoppedError)) {
      events.publish('run_failed', { step, error: (err as Error).message });
      await (events as Partial<NatsBridge>).close?.();
      if (err instanceof FleetRunError) throw new UsageError(err.message);
      throw err;
    }
    stopped = true;
    log.warn({ step }, `stopped at step ${step} (the step in progress was not applied)`);
  } finally {
    if (!stopped) {
      log.info(
        { run: runId, steps: reports.length },
        `run ${runId} ${operatorStop ? 'stopped' : 'complete'} after ${reports.length} steps; telling the workers`,
      );
      await coord.finish(fleet.finishTimeoutMs).catch(() => undefined);
    }
    coord.close();
    await server?.shutdown();
    await metricsServer?.close();
  }
  const seconds = (performance.now() - started) / 1000;
  if (opts.evaluate && !stopped) {
    after = await evaluateRetrieval(model, catalogue, {
      masks: cfg.evalMasks,
      batchSize: cfg.evalBatch,
      conv: engine.conv,
    });
    hooks.onEvaluation?.('after', after);
  }
  const checkpoint = store
    ? ((await saveCheckpoint(step, stopped || operatorStop ? 'stopped' : 'end of run', reports.at(-1)?.loss ?? null)) ??
      join(store.root, stepDirName(step)))
    : undefined;
  events.publish('run_finished', {
    steps: step,
    stopped: stopped || operatorStop,
    checkpoint: checkpoint ?? null,
    loss: reports.at(-1)?.loss ?? null,
  });
  await (events as Partial<NatsBridge>).close?.();
  updater.dispose();
  model.dispose();
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
    stopped: stopped || operatorStop,
  };
}

/** Embeds one image of every train item over the fleet and returns item -> embedding. */
async function refreshHardNegatives(
  coord: FleetCoordinator,
  items: Map<number, number[]>,
  step: number,
  epoch: number,
  log: Logger,
): Promise<Map<number, Float32Array>> {
  const t0 = performance.now();
  const reps = [...items].filter(([, ids]) => ids.length >= 2).map(([item, ids]) => ({ item, image: ids[0] }));
  const units: PlannedShard[] = [];
  for (let i = 0; i < reps.length; i += 64) {
    const part = reps.slice(i, i + 64);
    units.push({ index: units.length, imageIds: part.map((r) => r.image), itemIds: part.map((r) => r.item) });
  }
  const work = new StepWork<EmbedResult>('embed', step, epoch, units);
  await coord.execute(work);
  const out = new Map<number, Float32Array>();
  for (const { units: us, result } of work.results) {
    const itemIds = us.flatMap((u) => units[u].itemIds);
    itemIds.forEach((item, i) => out.set(item, result.embeddings.slice(i * result.dim, (i + 1) * result.dim)));
  }
  const seconds = (performance.now() - t0) / 1000;
  log.info(
    { step, items: out.size, seconds },
    `hard-negative plan refreshed at step ${step}: ${out.size} items embedded in ${seconds.toFixed(2)} s`,
  );
  return out;
}

function recordStep(
  m: CoordinatorMetrics,
  r: FleetStepReport,
  results: { workerId: string; result: TrainResult }[],
): void {
  m.stepDuration.observe(r.seconds);
  m.stepPhase.observe({ phase: 'data' }, r.workerDataSeconds);
  m.stepPhase.observe({ phase: 'compute' }, r.workerComputeSeconds);
  m.stepPhase.observe({ phase: 'exchange' }, r.exchangeSeconds);
  m.stepPhase.observe({ phase: 'averaging' }, r.averageSeconds);
  m.stepPhase.observe({ phase: 'optimizer' }, r.optimizerSeconds);
  m.steps.inc();
  m.step.set(r.step + 1);
  m.lastStep.set(Date.now() / 1000);
  m.images.set(r.imagesPerSecond);
  m.triplets.set(r.triplets / r.seconds);
  m.loss.set(r.loss);
  m.activeFraction.set(r.triplets ? r.activeTriplets / r.triplets : 0);
  m.gradientNorm.set(r.gradientNorm);
  const weighted = (f: (t: TrainResult) => number) =>
    results.reduce((acc, x) => acc + f(x.result) * x.result.triplets, 0) / Math.max(1, r.triplets);
  m.distance.set(
    { pair: 'positive' },
    weighted((t) => t.meanPositiveDistance),
  );
  m.distance.set(
    { pair: 'negative' },
    weighted((t) => t.meanNegativeDistance),
  );
  const busy = results.map((x) => ({ worker: x.workerId, s: x.result.dataSeconds + x.result.computeSeconds }));
  const mid = median(busy.map((b) => b.s));
  m.workerLag.reset();
  for (const b of busy) m.workerLag.set({ worker: b.worker }, b.s - mid);
}
