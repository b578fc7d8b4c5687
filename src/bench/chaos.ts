// `tricaps bench chaos`: the fault-injection soak. For each seeded schedule it runs an uninterrupted
// reference run, then the same job on a real coordinator and three workers (children of the CLI on
// loopback) while injecting the schedule's faults one after the other: kill -9 and SIGSTOP/SIGCONT
// of workers, kill -9 and --resume of the coordinator, a checkpoint disk that fills up, a worker that
// joins late. Each fault must be named in the coordinator's log within its deadline; a watchdog ends
// a run that stops making progress. Afterwards: every step applied once with all its shards, the
// final weights equal to the reference's where the summation grouping allows it (and close where it
// does not), no unfinished checkpoint left. A failing schedule prints its seed for replay.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stepDirName } from '../shared/checkpoint-format.js';
import { UsageError } from '../shared/errors.js';
import {
  FAULT_KINDS,
  MEMBERSHIP_FAULTS,
  firstRegrouping,
  float32Difference,
  lineageOf,
  planSchedule,
  replayMismatches,
  type FaultKind,
  type Incarnation,
  type PlannedFault,
  type StepLine,
} from './chaos-schedule.js';
import { FleetProcess, listeningAddress, TINY, type LogLine } from './processes.js';

export { FAULT_KINDS, type FaultKind } from './chaos-schedule.js';

export interface ChaosOptions {
  seed: number;
  schedules: number;
  /** Training steps per run (default: what the schedule needs). */
  steps?: number;
  /** Workers' data and compute padded to this (ms): steps long enough for faults to land mid-step. */
  simulateComputeMs: number;
  /** The gradient exchange of both runs (ring: workers with --peer-listen on loopback). */
  exchange?: 'central' | 'ring';
  /** Faults per schedule (each kind at least once). */
  faults: number;
  kinds: readonly FaultKind[];
  heartbeatTimeoutMs: number;
  /** Keep every process's log here (default: a temporary folder kept only when a schedule fails). */
  logs?: string;
  /** Progress lines (stderr in the CLI). */
  say(msg: string): void;
  signal?: AbortSignal;
}

export interface FaultReport extends PlannedFault {
  /** The coordinator line that named it (or the line that showed recovery), and how long it took. */
  named?: string;
  namedAfterMs?: number;
  /** What followed: the worker joined again, the coordinator resumed at step N, space was freed. */
  recovered?: string;
}

export interface ScheduleReport {
  seed: number;
  ok: boolean;
  violations: string[];
  /** Replays this schedule alone. */
  replay: string;
  steps: number;
  minWorkers: number;
  faults: FaultReport[];
  /** Kinds asked for that could not be injected here, and why. */
  notRun: Record<string, string>;
  coordinators: { startStep: number; stepsLogged: number }[];
  /**
   * Final weights against the uninterrupted run's. Bit-identity is promised when every step's shards
   * were grouped as in that run (coordinator restarts, a full disk, pauses); once a worker is lost or
   * joins, float32 summation order differs, batch-hard mining amplifies it within a few dozen steps,
   * and the difference is reported, not judged (the lineage and replay checks still hold).
   */
  weights?: {
    identical: boolean;
    identityExpected: boolean;
    firstRegroupedStep: number;
    maxAbsDiff: number;
    maxAbs: number;
  };
  seconds: number;
  logs?: string;
}

const WORKERS = ['a', 'b', 'c'];
const SHARDS = 4;

/** The CLI script the soak starts: dist/cli.js beside this module when built, else under the cwd. */
function cliPath(): string {
  const here = fileURLToPath(import.meta.url);
  return here.endsWith('.ts') ? resolve('dist/cli.js') : resolve(dirname(here), '..', 'cli.js');
}

/** The schedule of one seed with these options (throws UsageError when the options cannot hold it). */
function planFor(
  seed: number,
  o: ChaosOptions,
  kinds: readonly FaultKind[],
): { faults: PlannedFault[]; steps: number } {
  const plan = planSchedule(seed, {
    kinds,
    faults: o.faults - (o.kinds.length - kinds.length),
    workers: WORKERS,
    heartbeatTimeoutMs: o.heartbeatTimeoutMs,
    stepMs: o.simulateComputeMs + 60,
  });
  const steps = o.steps ?? plan.steps;
  if (steps < plan.steps)
    throw new UsageError(
      `--steps ${steps} is too short for schedule ${seed} (${plan.faults.length} faults need ${plan.steps} steps); use at least ${plan.steps} or leave --steps out`,
    );
  return { faults: plan.faults, steps };
}

export async function runChaos(o: ChaosOptions): Promise<{ ok: boolean; schedules: ScheduleReport[] }> {
  // Every schedule is planned first, so options that cannot hold one fail before anything starts.
  for (let i = 0; i < o.schedules; i++) planFor(o.seed + i, o, o.kinds);
  o.say(`seed ${o.seed}, ${o.schedules} schedule(s) of ${o.faults} faults`);
  const schedules: ScheduleReport[] = [];
  for (let i = 0; i < o.schedules && !o.signal?.aborted; i++) {
    const report = await runSchedule(o.seed + i, o);
    schedules.push(report);
    o.say(
      `schedule seed ${report.seed}: ${report.ok ? 'ok' : 'FAILED'} in ${report.seconds.toFixed(0)} s (${report.faults
        .map((f) => f.kind)
        .join(
          ', ',
        )})${report.ok ? '' : `; ${report.violations.join('; ')}; replay: ${report.replay}; logs in ${report.logs}`}`,
    );
  }
  return { ok: schedules.every((s) => s.ok), schedules };
}

const isStepLine = (l: LogLine) => typeof l.msg === 'string' && /^step \d+ loss/.test(l.msg);
const stepLines = (p: FleetProcess): StepLine[] =>
  p.lines.filter(isStepLine).map((l) => ({
    step: l.step as number,
    loss: l.loss as number,
    shards: l.shards as number,
    shardsComputed: l.shards_computed as number,
    shardGroups: l.shard_groups as number[][],
  }));
const lineTime = (l: LogLine) => (typeof l.time === 'string' ? Date.parse(l.time) : Date.now());

/** Everything one schedule started, so that any failure can kill it all and unmount the disk. */
class Processes {
  readonly all: { role: string; proc: FleetProcess }[] = [];
  stalled: string | undefined;

  constructor(private readonly cli: string) {}

  start(role: string, args: string[]): FleetProcess {
    const proc = new FleetProcess(args, { TRICAPS_LOG_LEVEL: 'info' }, this.cli);
    this.all.push({ role, proc });
    return proc;
  }

  killAll(): void {
    for (const { proc } of this.all) proc.kill('SIGKILL');
  }

  async ended(): Promise<void> {
    this.killAll();
    await Promise.all(this.all.map(({ proc }) => proc.exited));
  }

  saveLogs(dir: string): void {
    mkdirSync(dir, { recursive: true });
    const counts = new Map<string, number>();
    for (const { role, proc } of this.all) {
      const n = (counts.get(role) ?? 0) + 1;
      counts.set(role, n);
      writeFileSync(join(dir, `${role}-${n}.log`), proc.raw.join('\n') + '\n');
    }
  }
}

function replayCommand(seed: number, o: ChaosOptions): string {
  const kinds = o.kinds.length === FAULT_KINDS.length ? '' : ` --kinds ${o.kinds.join(',')}`;
  const steps = o.steps ? ` --steps ${o.steps}` : '';
  const exchange = o.exchange === 'ring' ? ' --exchange ring' : '';
  return `tricaps bench chaos --seed ${seed} --schedules 1${steps} --faults ${o.faults}${kinds} --heartbeat-timeout ${o.heartbeatTimeoutMs} --simulate-compute-ms ${o.simulateComputeMs}${exchange}`;
}

/** Mounts a small tmpfs so the checkpoint disk can be filled; undefined when that is not possible. */
function mountSmallDisk(dir: string): string | undefined {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', dir], { stdio: 'pipe' });
    return undefined;
  } catch (e) {
    const why = String((e as { stderr?: Buffer }).stderr ?? e)
      .trim()
      .split('\n')[0];
    return `cannot mount a small tmpfs for the checkpoint disk (needs root): ${why}`;
  }
}

/** Fills the disk holding dir; returns the filler's path (remove it to free the space). */
function fillDisk(dir: string): string {
  const filler = join(dir, 'filler');
  const { bavail, bsize } = statfsSync(dir);
  try {
    writeFileSync(filler, Buffer.alloc(Number(bavail) * Number(bsize)));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  }
  return filler;
}

async function runSchedule(seed: number, o: ChaosOptions): Promise<ScheduleReport> {
  const t0 = performance.now();
  const work = mkdtempSync(join(tmpdir(), `tricaps-chaos-${seed}-`));
  const checkpoints = join(work, 'checkpoints');
  const referenceDir = join(work, 'reference');
  mkdirSync(checkpoints);
  const notRun: Record<string, string> = {};
  let kinds = [...o.kinds];
  let mounted = false;
  if (kinds.includes('disk-full')) {
    const why = mountSmallDisk(checkpoints);
    if (why) {
      notRun['disk-full'] = why;
      kinds = kinds.filter((k) => k !== 'disk-full');
    } else mounted = true;
  }
  // A schedule that never changes membership must reproduce the reference bit for bit; it waits for
  // all three workers (a restarted coordinator would otherwise start a step with the first two).
  const changesMembership = kinds.some((k) => MEMBERSHIP_FAULTS.includes(k));
  const minWorkers = changesMembership ? 2 : WORKERS.length;
  const hb = o.heartbeatTimeoutMs;
  let plan: { faults: PlannedFault[]; steps: number };
  try {
    plan = planFor(seed, o, kinds);
  } catch (e) {
    // Only when the disk could not be mounted and the smaller schedule no longer fits --steps.
    if (mounted) execFileSync('umount', [checkpoints], { stdio: 'ignore' });
    rmSync(work, { recursive: true, force: true });
    throw e;
  }
  const steps = plan.steps;
  const report: ScheduleReport = {
    seed,
    ok: false,
    violations: [],
    replay: replayCommand(seed, o),
    steps,
    minWorkers,
    faults: [],
    notRun,
    coordinators: [],
    seconds: 0,
  };
  const procs = new Processes(cliPath());
  const stallMs = Math.max(30_000, 6 * hb);
  const job = [
    ...TINY,
    '--steps',
    String(steps),
    '--shards',
    String(SHARDS),
    '--seed',
    String(seed % 1_000_000),
    '--checkpoint-every',
    '2',
    '--keep-checkpoints',
    '2',
    '--heartbeat-timeout',
    String(hb),
    '--run-id',
    `chaos-${seed}`,
    '--exchange',
    o.exchange ?? 'central',
  ];
  const worker = (role: string, address: string, name: string) =>
    procs.start(`${role}-${name}`, [
      'worker',
      '--coordinator',
      address,
      '--engine',
      'wasm',
      '--name',
      name,
      '--reconnect-timeout',
      '60',
      '--simulate-compute-ms',
      String(o.simulateComputeMs),
      ...(o.exchange === 'ring' ? ['--peer-listen', '127.0.0.1:0'] : []),
    ]);

  // The watchdog: no coordinator step line for stallMs, or the schedule over its total budget, kills
  // every process, so whatever the driver awaits fails at once; the stall is the reported cause.
  let lastProgress = Date.now();
  let progressCount = 0;
  const budgetEnd = Date.now() + 10 * 60_000;
  const watchdog = setInterval(() => {
    const count = procs.all
      .filter((p) => p.role.endsWith('coordinator'))
      .reduce((n, p) => n + p.proc.steps().length, 0);
    if (count !== progressCount) {
      progressCount = count;
      lastProgress = Date.now();
    }
    const silent = Date.now() - lastProgress;
    if (!procs.stalled && (silent > stallMs || Date.now() > budgetEnd || o.signal?.aborted)) {
      procs.stalled = o.signal?.aborted
        ? 'interrupted'
        : silent > stallMs
          ? `stall: no step applied for ${(silent / 1000).toFixed(0)} s (watchdog ${stallMs / 1000} s)`
          : 'the schedule ran over its 10-minute budget';
      procs.killAll();
    }
  }, 250);

  try {
    // The uninterrupted run: all three workers from step 0.
    const ref = procs.start('reference-coordinator', [
      'coordinator',
      '--listen',
      '127.0.0.1:0',
      ...job,
      '--min-workers',
      String(WORKERS.length),
      '--checkpoint-dir',
      referenceDir,
    ]);
    const refAddress = await listeningAddress(ref);
    for (const w of WORKERS) worker('reference-worker', refAddress, w);
    const refExit = await ref.exited;
    if (refExit.code !== 0) throw new Error(`the reference run failed (exit ${refExit.code ?? refExit.signal})`);
    const reference = stepLines(ref);
    o.say(
      `schedule seed ${seed}: ${plan.faults.map((f) => `${f.kind}${f.worker ? `(${f.worker})` : ''}@${f.atStep}`).join(' ')} over ${steps} steps`,
    );

    // The run under faults.
    const late = plan.faults.find((f) => f.kind === 'late-join')?.worker;
    const coordinatorArgs = (address: string, resume: boolean) => [
      'coordinator',
      '--listen',
      address,
      ...job,
      '--min-workers',
      String(minWorkers),
      '--checkpoint-dir',
      checkpoints,
      ...(resume ? ['--resume'] : []),
    ];
    let coord = procs.start('coordinator', coordinatorArgs('127.0.0.1:0', false));
    const address = await listeningAddress(coord);
    const workers = new Map<string, FleetProcess>();
    for (const w of WORKERS) if (w !== late) workers.set(w, worker('worker', address, w));
    const incarnations: { proc: FleetProcess; startStep: number }[] = [{ proc: coord, startStep: 0 }];
    const latestStep = () => coord.steps().at(-1)?.step as number | undefined;

    for (const fault of plan.faults) {
      const done: FaultReport = { ...fault };
      report.faults.push(done);
      const now = latestStep() ?? 0;
      if (now >= steps - 3)
        throw new Error(
          `the run reached step ${now} of ${steps} before ${fault.kind} (planned at step ${fault.atStep}) could be injected; the schedule outran the run: give it more --steps`,
        );
      // Wait for the step, then for the phase within the next one.
      await coord.waitFor(
        (l) => isStepLine(l) && (l.step as number) >= fault.atStep,
        stallMs,
        `step ${fault.atStep} before injecting ${fault.kind}`,
      );
      await sleep(fault.phaseMs);
      const from = coord.lines.length;
      const injectedAt = Date.now();
      const named = (l: LogLine) => {
        done.named = l.msg;
        done.namedAfterMs = Math.max(0, lineTime(l) - injectedAt);
      };
      const nameDeadline = 2 * hb + 10_000;
      const lostLine = (w: string) => (l: LogLine) => l.msg.startsWith('lost worker ') && l.msg.includes(` (${w})`);
      const joinedLine = (w: string) => (l: LogLine) => /^worker \S+ \(.*\) joined/.test(l.msg) && l.name === w;
      switch (fault.kind) {
        case 'late-join': {
          const w = fault.worker!;
          workers.set(w, worker('worker', address, w));
          named(await coord.waitFor(joinedLine(w), 60_000, `late worker ${w} to join`, from));
          break;
        }
        case 'worker-kill': {
          const w = fault.worker!;
          workers.get(w)!.kill('SIGKILL');
          named(await coord.waitFor(lostLine(w), nameDeadline, `worker ${w} (kill -9) to be named lost`, from));
          await sleep(fault.holdMs);
          const again = coord.lines.length;
          workers.set(w, worker('worker', address, w));
          done.recovered = (await coord.waitFor(joinedLine(w), 60_000, `restarted worker ${w} to join`, again)).msg;
          break;
        }
        case 'worker-freeze':
        case 'worker-pause': {
          const w = fault.worker!;
          const p = workers.get(w)!;
          p.kill('SIGSTOP');
          if (fault.kind === 'worker-freeze') {
            named(await coord.waitFor(lostLine(w), nameDeadline, `frozen worker ${w} to be named lost`, from));
            await sleep(Math.max(0, fault.holdMs - (Date.now() - injectedAt)));
          } else await sleep(fault.holdMs);
          const resumedAt = coord.lines.length;
          p.kill('SIGCONT');
          if (fault.kind === 'worker-freeze' || coord.lines.slice(from).some(lostLine(w))) {
            // It was dropped: it must notice that it is no longer a member and join again.
            done.recovered = (
              await coord.waitFor(joinedLine(w), 60_000, `worker ${w} to join again after SIGCONT`, resumedAt)
            ).msg;
          } else {
            done.recovered = (
              await coord.waitFor(isStepLine, stallMs, `a step after worker ${w}'s pause`, resumedAt)
            ).msg;
          }
          if (fault.kind === 'worker-pause') done.named = coord.lines.slice(from).find(lostLine(w))?.msg;
          break;
        }
        case 'coordinator-restart': {
          coord.kill('SIGKILL');
          await coord.exited;
          done.named = `kill -9 of the coordinator after step ${latestStep() ?? 'none'}`;
          await sleep(fault.holdMs);
          coord = procs.start('coordinator', coordinatorArgs(address, true));
          const start = await coord.waitFor(
            (l) => l.msg.startsWith('resuming run') || l.msg.startsWith('no checkpoint under'),
            60_000,
            'the restarted coordinator to resume',
          );
          const startStep = start.msg.startsWith('resuming run') ? (start.step as number) : 0;
          incarnations.push({ proc: coord, startStep });
          done.named = `${done.named}; ${start.msg}`;
          done.namedAfterMs = lineTime(start) - injectedAt;
          // Every live worker finds the new coordinator by itself and registers again.
          for (const w of workers.keys())
            await coord.waitFor(joinedLine(w), 60_000, `worker ${w} to join the restarted coordinator`);
          done.recovered = `${workers.size} workers joined the restarted coordinator`;
          break;
        }
        case 'disk-full': {
          const filler = fillDisk(checkpoints);
          try {
            named(
              await coord.waitFor(
                (l) => /^cannot write checkpoint .*no space left/.test(l.msg),
                stallMs,
                'a checkpoint to fail on the full disk',
                from,
              ),
            );
            await sleep(fault.holdMs);
          } finally {
            rmSync(filler, { force: true });
          }
          const freed = coord.lines.length;
          done.recovered = (
            await coord.waitFor(
              (l) => /^checkpoint \S+ saved/.test(l.msg),
              stallMs,
              'a checkpoint once space was freed',
              freed,
            )
          ).msg;
          break;
        }
      }
      if (done.namedAfterMs !== undefined && fault.kind !== 'coordinator-restart' && done.namedAfterMs > 2 * hb + 5000)
        report.violations.push(
          `${fault.kind} of ${fault.worker} at step ${fault.atStep} was named only after ${done.namedAfterMs} ms (heartbeat timeout ${hb} ms)`,
        );
    }

    // The end: the last coordinator completes the run and tells the workers, who all exit 0.
    const exit = await coord.exited;
    if (procs.stalled) throw new Error(procs.stalled);
    if (exit.code !== 0)
      report.violations.push(
        `the coordinator exited ${exit.code ?? exit.signal}: ${coord.raw.filter((l) => l.startsWith('tricaps: ')).join(' ')}`,
      );
    for (const [w, p] of workers) {
      const e = await Promise.race([p.exited, sleep(30_000).then(() => undefined)]);
      if (!e) report.violations.push(`worker ${w} still running 30 s after the run completed`);
      else if (e.code !== 0) report.violations.push(`worker ${w} exited ${e.code ?? e.signal} after the run`);
    }

    // The invariants.
    const incs: Incarnation[] = incarnations.map((i) => ({ startStep: i.startStep, steps: stepLines(i.proc) }));
    report.coordinators = incs.map((i) => ({ startStep: i.startStep, stepsLogged: i.steps.length }));
    const { lineage, violations } = lineageOf(incs, steps);
    report.violations.push(...violations, ...replayMismatches(incs));
    const leftovers = readdirSync(checkpoints).filter((n) => n.includes('.tmp-'));
    if (leftovers.length) report.violations.push(`unfinished checkpoints left: ${leftovers.join(', ')}`);
    if (exit.code === 0) {
      const final = stepDirName(steps);
      const ours = readFileSync(join(checkpoints, final, 'weights.bin'));
      const theirs = readFileSync(join(referenceDir, final, 'weights.bin'));
      const regrouped = firstRegrouping(lineage, reference);
      const identical =
        ours.equals(theirs) &&
        readFileSync(join(checkpoints, final, 'optimizer.bin')).equals(
          readFileSync(join(referenceDir, final, 'optimizer.bin')),
        );
      const diff = float32Difference(ours, theirs);
      report.weights = { identical, identityExpected: regrouped < 0, firstRegroupedStep: regrouped, ...diff };
      if (regrouped < 0 && !identical)
        report.violations.push(
          `every step was grouped as in the uninterrupted run, yet the final weights differ (largest difference ${diff.maxAbsDiff})`,
        );
    }
  } catch (e) {
    report.violations.push(procs.stalled ?? (e as Error).message.split('\n')[0]);
  } finally {
    clearInterval(watchdog);
    await procs.ended();
    if (mounted) {
      try {
        execFileSync('umount', [checkpoints], { stdio: 'ignore' });
      } catch {
        // kept mounted: reported by the rm below failing, which names the folder
      }
    }
    report.ok = report.violations.length === 0;
    report.seconds = (performance.now() - t0) / 1000;
    if (o.logs || !report.ok) {
      report.logs = join(o.logs ?? work, `seed-${seed}`);
      procs.saveLogs(report.logs);
    }
    if (o.logs || report.ok) rmSync(work, { recursive: true, force: true });
  }
  return report;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
