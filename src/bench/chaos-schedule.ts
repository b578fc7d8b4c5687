// The fault-injection soak's pure parts: the seeded schedule of faults, and the invariants checked on
// the step lines the coordinators logged (which steps the final weights went through, each once and
// with all its shards). No processes: `chaos.ts` drives real ones and tests reach these directly.
import { UsageError } from '../shared/errors.js';
import { Rng } from '../shared/rng.js';

export const FAULT_KINDS = [
  /** kill -9 of a worker at a random phase of a step; its supervisor starts it again a little later. */
  'worker-kill',
  /** SIGSTOP of a worker for longer than the heartbeat timeout, then SIGCONT: dropped, it must join again. */
  'worker-freeze',
  /** SIGSTOP of a worker for a fraction of the heartbeat timeout, then SIGCONT: a hiccup, not a loss. */
  'worker-pause',
  /** kill -9 of the coordinator at a random phase, restarted with --resume on the same address. */
  'coordinator-restart',
  /** The checkpoint directory runs out of space for a few steps, then space is freed. */
  'disk-full',
  /** One worker starts only after the run is under way. */
  'late-join',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Faults that change who computes which shards (the summation grouping), so bit-identity is off. */
export const MEMBERSHIP_FAULTS: readonly FaultKind[] = ['worker-kill', 'worker-freeze', 'late-join'];

export interface PlannedFault {
  kind: FaultKind;
  /** Injected once the run has logged this step (or a later one). */
  atStep: number;
  /** Delay after that step line: the phase of the next step the fault lands in. */
  phaseMs: number;
  /** The worker it hits (worker faults and late-join). */
  worker?: string;
  /** How long the fault lasts: SIGSTOP time, down time before a restart, disk kept full. */
  holdMs: number;
}

export interface ScheduleOptions {
  kinds: readonly FaultKind[];
  /** Faults in all (each kind at least once, so a schedule covers every kind asked for). */
  faults: number;
  workers: string[];
  heartbeatTimeoutMs: number;
  /** A step's usual duration: phases are drawn within it and fault durations converted to steps. */
  stepMs: number;
}

export interface Schedule {
  faults: PlannedFault[];
  /** Steps the run needs so that every fault lands in it and the last steps run undisturbed. */
  steps: number;
}

/** Steps after the last fault: the run finishes (and writes its final checkpoint) undisturbed. */
const QUIET_STEPS = 6;

/**
 * The faults of one schedule, in the order they are injected, and the steps the run needs. Every
 * kind asked for appears at least once; the rest are drawn at random. Faults are injected one after
 * the other (each once the previous one is named and recovered from), so each is placed a few steps
 * after the time the previous one is expected to take.
 */
export function planSchedule(seed: number, o: ScheduleOptions): Schedule {
  const rng = new Rng(seed);
  const kinds = [...o.kinds];
  if (o.faults < kinds.length)
    throw new UsageError(
      `--faults ${o.faults} cannot cover the ${kinds.length} kinds asked for (${kinds.join(', ')}); use at least ${kinds.length}`,
    );
  // late-join happens once, first (a worker that starts late); the others fill the rest at random.
  const repeatable = kinds.filter((k) => k !== 'late-join');
  const drawn: FaultKind[] = [...repeatable];
  const extra = o.faults - kinds.length;
  for (let i = 0; i < extra && repeatable.length > 0; i++) drawn.push(repeatable[rng.int(repeatable.length)]);
  for (let i = drawn.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [drawn[i], drawn[j]] = [drawn[j], drawn[i]];
  }
  const ordered: FaultKind[] = kinds.includes('late-join') ? ['late-join', ...drawn] : drawn;
  const hb = o.heartbeatTimeoutMs;
  let cursor = 1;
  const faults = ordered.map((kind): PlannedFault => {
    const worker =
      kind === 'coordinator-restart' || kind === 'disk-full' ? undefined : o.workers[rng.int(o.workers.length)];
    const holdMs = Math.round(
      kind === 'worker-freeze'
        ? hb * rng.uniform(1.5, 2.5)
        : kind === 'worker-pause'
          ? hb * rng.uniform(0.05, 0.25)
          : kind === 'disk-full'
            ? o.stepMs * rng.uniform(0.5, 3)
            : rng.uniform(0, 2000),
    );
    // What the fault is expected to take, in steps the others keep training meanwhile (a process
    // start is counted as 3 s on two busy cores).
    const startMs = 3000;
    const expectedMs =
      kind === 'late-join'
        ? startMs
        : kind === 'worker-kill'
          ? hb + holdMs + startMs
          : kind === 'worker-freeze'
            ? holdMs + 1000
            : kind === 'worker-pause'
              ? holdMs
              : kind === 'disk-full'
                ? 4 * o.stepMs + holdMs
                : // A coordinator restart stops the run meanwhile and replays from its checkpoint; its
                  // workers find the new one after their backoff (at most 5 s a try), and the run
                  // must not complete before they have.
                  holdMs + startMs + 5000;
    const atStep = cursor + rng.int(3);
    cursor = atStep + 1 + Math.ceil(expectedMs / o.stepMs);
    return { kind, atStep, phaseMs: Math.round(rng.uniform(0, o.stepMs)), worker, holdMs };
  });
  return { faults, steps: cursor + QUIET_STEPS };
}

/** A coordinator's step line, as the soak reads it. */
export interface StepLine {
  step: number;
  loss: number;
  shards: number;
  shardsComputed: number;
  shardGroups: number[][];
}

/** One coordinator process: the step it started from (0, or the checkpoint it resumed) and its steps. */
export interface Incarnation {
  startStep: number;
  steps: StepLine[];
}

/**
 * The steps the final weights went through: each incarnation's steps from where it started until
 * the step the next one resumed from (what came after was thrown away with the process). Checks that
 * this covers 0..total-1 exactly once, each step with every shard, and that no process applied a
 * step twice or skipped one.
 */
export function lineageOf(incarnations: Incarnation[], total: number): { lineage: StepLine[]; violations: string[] } {
  const violations: string[] = [];
  const lineage: StepLine[] = [];
  incarnations.forEach((inc, i) => {
    const next = incarnations[i + 1]?.startStep ?? total;
    const seen = inc.steps.map((s) => s.step);
    seen.forEach((s, k) => {
      const want = inc.startStep + k;
      if (s !== want) violations.push(`coordinator ${i + 1} logged step ${s} where step ${want} was due`);
    });
    if (i + 1 < incarnations.length && next > inc.startStep + seen.length)
      violations.push(
        `coordinator ${i + 2} resumed at step ${next}, but coordinator ${i + 1} only applied steps up to ${inc.startStep + seen.length - 1}`,
      );
    lineage.push(...inc.steps.filter((s) => s.step >= inc.startStep && s.step < next));
  });
  const steps = lineage.map((s) => s.step);
  const expected = [...Array(total).keys()];
  if (steps.length !== total || steps.some((s, i) => s !== expected[i]))
    violations.push(`the final weights went through steps [${compress(steps)}], not 0..${total - 1} once each`);
  for (const s of lineage) {
    const covered = s.shardGroups.flat().sort((a, b) => a - b);
    const all = [...Array(s.shards).keys()];
    if (s.shardsComputed !== s.shards || covered.length !== all.length || covered.some((u, i) => u !== all[i]))
      violations.push(
        `step ${s.step} was applied with shards [${covered}] (${s.shardsComputed} computed) of ${s.shards}`,
      );
  }
  return { lineage, violations };
}

/** 0,1,2,3,7,8 -> "0-3,7-8": step lists stay readable in a message. */
export function compress(xs: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < xs.length;) {
    let j = i;
    while (j + 1 < xs.length && xs[j + 1] === xs[j] + 1) j++;
    parts.push(j === i ? `${xs[i]}` : `${xs[i]}-${xs[j]}`);
    i = j + 1;
  }
  return parts.join(',');
}

/**
 * Steps a restarted coordinator ran again from its checkpoint (the previous one had applied them
 * before it was killed): from the same restored weights they must give the same loss, bit for bit
 * when the shards were grouped alike, else within float32 summation order (1e-6 relative).
 */
export function replayMismatches(incarnations: Incarnation[]): string[] {
  const out: string[] = [];
  incarnations.forEach((later, i) => {
    for (const s of later.steps) {
      for (let j = 0; j < i; j++) {
        const before = incarnations[j].steps.find((x) => x.step === s.step);
        if (!before) continue;
        const sameGroups = JSON.stringify(before.shardGroups) === JSON.stringify(s.shardGroups);
        const ok = sameGroups ? before.loss === s.loss : Math.abs(before.loss - s.loss) <= 1e-6 * Math.abs(before.loss);
        if (!ok)
          out.push(
            `step ${s.step} replayed by coordinator ${i + 1} from its checkpoint gave loss ${s.loss}, coordinator ${j + 1} had ${before.loss}${sameGroups ? ' with the same shard grouping' : ''}`,
          );
      }
    }
  });
  return out;
}

/** The first lineage step whose grouping differs from the reference run's (-1: none). */
export function firstRegrouping(lineage: StepLine[], reference: StepLine[]): number {
  const key = (g: number[][]) => JSON.stringify(g);
  for (const s of lineage) {
    const r = reference[s.step];
    if (!r || key(r.shardGroups) !== key(s.shardGroups)) return s.step;
  }
  return -1;
}

/** Largest absolute difference of two little-endian float32 files' values, and their largest magnitude. */
export function float32Difference(a: Uint8Array, b: Uint8Array): { maxAbsDiff: number; maxAbs: number } {
  if (a.byteLength !== b.byteLength || a.byteLength % 4 !== 0)
    throw new Error(`weights of ${a.byteLength} and ${b.byteLength} bytes cannot be compared`);
  const x = new Float32Array(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
  const y = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  let maxAbsDiff = 0;
  let maxAbs = 0;
  for (let i = 0; i < x.length; i++) {
    maxAbsDiff = Math.max(maxAbsDiff, Math.abs(x[i] - y[i]));
    maxAbs = Math.max(maxAbs, Math.abs(y[i]));
  }
  return { maxAbsDiff, maxAbs };
}
