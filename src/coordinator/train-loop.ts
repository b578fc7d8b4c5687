// The step loop, in one screen: at each step boundary obey the operator (pause, checkpoint, stop),
// the clock (--max-minutes) and the caller (a reason to abort); run the step; report it; evaluate
// and checkpoint at their cadences. No transport, no servers: those are wired around it
// (run-coordinator.ts), and tests drive it with a fake executor.
import type { EvaluationResult } from '../shared/eval/evaluate.js';
import type { Logger } from '../shared/log.js';
import { StoppedError } from './fleet-coordinator.js';
import type { RunControl } from './run-control.js';
import type { StepOutcome, StepReport } from './step.js';
import type { StepSink } from './step-sink.js';

export interface LoopOptions {
  firstStep: number;
  totalSteps: number;
  /** 0 = no limit. */
  maxMinutes: number;
  /** Evaluate (headline mask) every n steps; 0 = never. */
  evalEvery: number;
  /** Checkpoint every n steps; 0 = only at the end (the caller's). */
  checkpointEvery: number;
}

export interface LoopDeps {
  runStep(step: number): Promise<StepOutcome>;
  /** Before a step: refresh the hard-negative plan and the like. */
  beforeStep?(step: number): Promise<void>;
  evaluate(nextStep: number): Promise<EvaluationResult>;
  /** Saves a checkpoint of the state before `nextStep`; the directory, or undefined when off. */
  checkpoint(nextStep: number, reason: string, loss: number | null): Promise<string | undefined>;
  control: RunControl;
  sink: StepSink;
  log: Logger;
  /** Polled between steps: a reason to stop the run early (a local fleet lost its processes). */
  abortReason?(): string | undefined;
  now?(): number;
}

export interface LoopResult {
  /** The next step to run (the step count reached). */
  nextStep: number;
  reports: StepReport[];
  /** Why it ended before the planned steps: an operator (NATS stop) or the clock (--max-minutes). */
  stoppedBy?: 'operator' | 'clock';
}

/**
 * Runs steps [firstStep, totalSteps). Throws StoppedError when interrupted (SIGTERM: the step in
 * progress is not applied; `result.nextStep` is then carried by the error's `nextStep`).
 */
export async function trainLoop(o: LoopOptions, d: LoopDeps): Promise<LoopResult> {
  const now = d.now ?? (() => performance.now());
  const started = now();
  const reports: StepReport[] = [];
  const lastLoss = () => reports.at(-1)?.loss ?? null;
  let step = o.firstStep;
  try {
    for (; step < o.totalSteps; step++) {
      const abort = d.abortReason?.();
      if (abort) throw new Error(abort);
      await d.control.atStepBoundary(step, (reason) => d.checkpoint(step, reason, lastLoss()));
      if (d.control.interrupted) throw new StoppedError();
      if (d.control.stopRequested) {
        d.log.warn({ step }, `stopping before step ${step} as asked`);
        return { nextStep: step, reports, stoppedBy: 'operator' };
      }
      if (o.maxMinutes > 0 && now() - started > o.maxMinutes * 60_000) {
        d.log.warn(
          { step, maxMinutes: o.maxMinutes },
          `stopping after ${step} steps: --max-minutes ${o.maxMinutes} reached`,
        );
        return { nextStep: step, reports, stoppedBy: 'clock' };
      }
      await d.beforeStep?.(step);
      const outcome = await d.runStep(step);
      if (!outcome.applied) {
        d.sink.skipped(step, outcome.reason);
        continue;
      }
      reports.push(outcome.report);
      d.sink.step(outcome.report, outcome.work);
      if (o.evalEvery > 0 && (step + 1) % o.evalEvery === 0) d.sink.evaluation(step + 1, await d.evaluate(step + 1));
      if (o.checkpointEvery > 0 && (step + 1) % o.checkpointEvery === 0) {
        await d.checkpoint(step + 1, `every ${o.checkpointEvery} steps`, outcome.report.loss);
      }
    }
    return { nextStep: step, reports };
  } catch (err) {
    if (err instanceof StoppedError) throw new LoopStopped(step, reports);
    throw Object.assign(err as Error, { loopStep: step });
  }
}

/** The loop was interrupted before `nextStep` (which was not applied). */
export class LoopStopped extends StoppedError {
  constructor(
    readonly nextStep: number,
    readonly reports: StepReport[],
  ) {
    super(`stopped at step ${nextStep}`);
  }
}
