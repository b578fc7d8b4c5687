// Where a run's reports go: the log, Prometheus, NATS, the run history and the caller's hooks (the
// progress bar). The loop talks to one StepSink; each destination is its own small sink, and a
// destination that is off is simply not in the list (no `?.` at every call).
import type { EvaluationResult } from '../shared/eval/evaluate.js';
import type { Logger } from '../shared/log.js';
import type { CoordinatorMetrics } from '../shared/metrics.js';
import { join } from 'node:path';
import { HISTORY_FILE, RunHistory } from '../shared/run-history.js';
import { median, processCpuSeconds } from '../shared/stats.js';
import type { EventSink } from './nats-bridge.js';
import type { StepReport, TrainWork } from './step.js';

export interface SavedCheckpoint {
  dir: string;
  step: number;
  reason: string;
  bytes: number;
  seconds: number;
}

export interface StepSink {
  step(report: StepReport, work: TrainWork): void;
  /** A step that found no triplet: nothing applied. */
  skipped(step: number, reason: string): void;
  /** The headline evaluation after `step` steps (--eval-every). */
  evaluation(step: number, headline: EvaluationResult): void;
  checkpoint(saved: SavedCheckpoint): void;
}

/** Sends every report to each of the sinks, in order. */
export function fanOut(sinks: Partial<StepSink>[]): StepSink {
  return {
    step: (r, work) => sinks.forEach((s) => s.step?.(r, work)),
    skipped: (step, reason) => sinks.forEach((s) => s.skipped?.(step, reason)),
    evaluation: (step, h) => sinks.forEach((s) => s.evaluation?.(step, h)),
    checkpoint: (saved) => sinks.forEach((s) => s.checkpoint?.(saved)),
  };
}

/** One structured line per step, evaluation and checkpoint (`tricaps coordinator`'s output). */
export function logSink(log: Logger): Partial<StepSink> {
  return {
    step(r) {
      log.info(
        {
          step: r.step,
          epoch: r.epoch,
          batch: r.batchHash,
          loss: r.loss,
          grad_norm: r.gradientNorm,
          triplets: r.triplets,
          shards: r.shards,
          shards_computed: r.shardsComputed,
          shard_groups: r.shardGroups,
          bytes_sent: r.bytesSent,
          bytes_received: r.bytesReceived,
          workers: r.workers,
          round: r.round,
          seconds: r.seconds,
          compute_s: r.workerComputeSeconds,
          data_s: r.workerDataSeconds,
          exchange_s: r.exchangeSeconds,
          average_s: r.averageSeconds,
          optimizer_s: r.optimizerSeconds,
          images_per_s: r.imagesPerSecond,
          cpu_s: processCpuSeconds(),
        },
        `step ${r.step} loss ${r.loss.toFixed(4)} workers ${r.workers} ${r.seconds.toFixed(2)} s`,
      );
    },
    skipped(step, reason) {
      log.warn({ step }, reason);
    },
    evaluation(step, h) {
      log.info(
        { step, mask: h.mask, recall: h.recall, mapAtR: h.mapAtR },
        `evaluation after ${step} steps: R@1 ${(h.recall[1] * 100).toFixed(1)}% (${h.mask})`,
      );
    },
    checkpoint(s) {
      log.info(
        { checkpoint: s.dir, step: s.step, reason: s.reason, bytes: s.bytes, seconds: s.seconds },
        `checkpoint ${s.dir} saved (${s.reason}) in ${s.seconds.toFixed(2)} s`,
      );
    },
  };
}

/** Prometheus: step metrics, per-worker lag, recall, checkpoint age; `progressed` feeds /healthz. */
export function metricsSink(m: CoordinatorMetrics, progressed: () => void): Partial<StepSink> {
  return {
    step(r, { results }) {
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
      const weighted = (f: (t: TrainWork['results'][number]['result']) => number) =>
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
      progressed();
    },
    evaluation(_step, h) {
      for (const [k, r] of Object.entries(h.recall)) m.recall.set({ k, mask: h.mask }, r);
    },
    checkpoint(s) {
      m.checkpointDuration.observe(s.seconds);
      m.checkpointBytes.set(s.bytes);
      m.checkpointLast.set(Date.now() / 1000);
    },
  };
}

/** NATS lifecycle events: a step summary every `stepInterval` steps, evaluations, checkpoints. */
export function eventSink(events: EventSink, stepInterval: number): Partial<StepSink> {
  return {
    step(r) {
      if ((r.step + 1) % stepInterval !== 0) return;
      events.publish('step_summary', {
        step: r.step + 1,
        epoch: r.epoch,
        loss: r.loss,
        gradientNorm: r.gradientNorm,
        triplets: r.triplets,
        activeTriplets: r.activeTriplets,
        workers: r.workers,
        seconds: r.seconds,
        imagesPerSecond: r.imagesPerSecond,
      });
    },
    evaluation(step, h) {
      events.publish('evaluation_done', { step, mask: h.mask, recall: h.recall, mapAtR: h.mapAtR });
    },
    checkpoint(s) {
      events.publish('checkpoint_saved', {
        step: s.step,
        dir: s.dir,
        reason: s.reason,
        bytes: s.bytes,
        seconds: s.seconds,
      });
    },
  };
}

/**
 * The run history beside the checkpoints, if there are checkpoints. A line it cannot write (a full
 * disk) is dropped with a warning, never the run: the checkpoints are what a resume needs.
 */
export function openRunHistory(checkpointDir: string | undefined, log: Logger): RunHistory | undefined {
  if (!checkpointDir) return undefined;
  const path = join(checkpointDir, HISTORY_FILE);
  return new RunHistory(path, {
    onWriteError: (e) =>
      log.warn(
        { path, code: e.code },
        `cannot append to ${path} (${e.code === 'ENOSPC' ? 'no space left on the device' : e.message}); history lines are dropped until it can be written again; training goes on`,
      ),
    onRecovered: (n) => log.warn({ path, linesLost: n }, `${path} is written again; ${n} history lines were lost`),
  });
}

/** The run history beside the checkpoints (`tricaps report`). */
export function historySink(history: RunHistory): Partial<StepSink> {
  return {
    step(r, work) {
      history.append({
        type: 'step',
        step: r.step,
        epoch: r.epoch,
        loss: r.loss,
        gradientNorm: r.gradientNorm,
        triplets: r.triplets,
        activeTriplets: r.activeTriplets,
        seconds: r.seconds,
        phases: {
          data: r.workerDataSeconds,
          compute: r.workerComputeSeconds,
          exchange: r.exchangeSeconds,
          averaging: r.averageSeconds,
          optimizer: r.optimizerSeconds,
        },
        workers: work.results.map((x) => ({
          id: x.workerId,
          images: x.units.reduce((n, u) => n + work.units[u].imageIds.length, 0),
          dataSeconds: x.result.dataSeconds,
          computeSeconds: x.result.computeSeconds,
        })),
      });
    },
    evaluation(step, h) {
      history.append({ type: 'evaluation', step, mask: h.mask, recall: h.recall, mapAtR: h.mapAtR });
    },
  };
}
