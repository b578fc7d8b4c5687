// Single-process training (`tricaps train --workers 0`): the same run as a fleet's (run-training.ts:
// the step loop, one step, checkpoints, evaluation before and after) with an in-process worker that
// runs the same gradient code (in-process-executor.ts), and no servers.
import type { Engine } from '../shared/engine/engine.js';
import type { EvaluationResult } from '../shared/eval/evaluate.js';
import type { Logger } from '../shared/log.js';
import type { TrainConfig } from '../shared/train-config.js';
import { InProcessExecutor } from './in-process-executor.js';
import { RunControl } from './run-control.js';
import { openRun, runJob } from './run-training.js';
import { planStep, type StepPlanInputs, type StepReport as RunStepReport } from './step.js';
import { fanOut, historySink, logSink, openRunHistory } from './step-sink.js';

/** A single-process step as the CLI shows it. */
export interface StepReport extends RunStepReport {
  /** Time this step waited for its batch (0 when prefetching kept up). */
  dataWaitSeconds: number;
  meanPositiveDistance: number;
  meanNegativeDistance: number;
}

export interface TrainHooks {
  /** The number of steps the run will take (--steps, or what --epochs comes to). */
  onPlanned?(totalSteps: number): void;
  onStep?(report: StepReport): void;
  onEvaluation?(phase: 'before' | 'after', results: EvaluationResult[]): void;
}

export interface TrainResult {
  engine: Engine;
  /** The step reached (counting steps before a resume). */
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
  // Single-process batches are one mining shard: a checkpoint of this mode resumes only in this mode.
  const job = await openRun(
    cfg,
    {
      shards: 1,
      shardsKey: 'single-process',
      checkpointing: ckpt,
      newRunId: () => `local-${Date.now().toString(36)}`,
      onPlanned: hooks.onPlanned,
    },
    log,
  );
  try {
    const { catalogue, resumed } = job;
    log.info(
      {
        catalogue: catalogue.name,
        params: job.arch.params.length,
        stepsPerEpoch: job.stepsPerEpoch,
        itemsPerBatch: job.itemsPerBatch,
      },
      'training in this process',
    );
    if (resumed)
      log.info(
        { checkpoint: resumed.dir, step: job.firstStep },
        `resuming from ${resumed.dir} at step ${job.firstStep}`,
      );
    const planCtx: StepPlanInputs = {
      cfg,
      items: job.items,
      itemsPerBatch: job.itemsPerBatch,
      stepsPerEpoch: job.stepsPerEpoch,
      shards: 1,
    };
    const executor = new InProcessExecutor({
      model: job.model,
      catalogue,
      cfg,
      conv: job.engine.conv,
      plan: (step) => planStep(planCtx, step),
      totalSteps: job.totalSteps,
    });
    const history = openRunHistory(cfg.checkpointDir, log);
    history?.append({
      type: 'run',
      runId: job.runId,
      step: job.firstStep,
      resumedFrom: resumed?.dir ?? null,
      engine: job.engine.name,
      device: job.engine.device,
      shards: 1,
    });
    const sink = fanOut([
      {
        step: (r, work) => {
          const [{ result }] = work.results;
          hooks.onStep?.({
            ...r,
            dataWaitSeconds: r.workerDataSeconds,
            meanPositiveDistance: result.meanPositiveDistance,
            meanNegativeDistance: result.meanNegativeDistance,
          });
        },
      },
      { checkpoint: logSink(log).checkpoint, skipped: logSink(log).skipped },
      history ? historySink(history) : {},
    ]);
    const outcome = await runJob(
      job,
      cfg,
      {
        executor,
        sink,
        control: new RunControl(),
        evaluate: true,
        evalEvery: 0,
        checkpointEvery: ckpt.every,
        onEvaluation: hooks.onEvaluation,
        round: () => 0,
        afterLoop: async () => executor.clear(),
      },
      log,
    );
    return {
      engine: job.engine,
      stepsRun: outcome.nextStep,
      before: outcome.before,
      after: outcome.after,
      losses: outcome.losses,
      dataWaitSeconds: outcome.reports.map((r) => r.workerDataSeconds),
      seconds: outcome.seconds,
      checkpoint: outcome.checkpoint,
    };
  } finally {
    job.dispose();
  }
}
