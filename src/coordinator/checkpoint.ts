// Resumable training checkpoints: one directory per step under the checkpoint root, written to a
// temporary name, every file fsynced, renamed into place, with manifest.json (step, epoch, sha256 of
// every file, metrics) written last, and a `latest` pointer replaced atomically. A directory without
// a manifest, or whose files do not match it, is never resumed from: loading falls back to the
// newest good one and says why. Retention keeps the last N plus the best by validation Recall@1.
//   step-NNNNNNNN/model.json, weights.bin   parameters and BatchNorm statistics (tfjs weights manifest)
//   step-NNNNNNNN/optimizer.json, .bin      Adam slots and iteration count
//   step-NNNNNNNN/state.json                run id, round, cursor (next step, epoch), configuration
//   step-NNNNNNNN/manifest.json             written last
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import {
  loadWeights,
  stepDirName,
  writeWeightsFiles,
  type OptimizerState,
  type SavedWeights,
} from '../shared/checkpoint-format.js';
import type { Logger } from '../shared/log.js';
import { UsageError } from '../shared/errors.js';
import { isStepDirName } from '../shared/paths.js';
import { readState, type ModelState } from '../shared/model/params.js';
import type { ParameterUpdater } from './optimizer.js';

export const MANIFEST_FORMAT = 'tricaps-checkpoint-v1';

const ManifestSchema = z.object({
  format: z.literal(MANIFEST_FORMAT),
  step: z.number().int().min(0),
  epoch: z.number().int().min(0),
  createdAt: z.string(),
  files: z.record(z.string(), z.object({ bytes: z.number().int().min(0), sha256: z.string().length(64) })),
  metrics: z.record(z.string(), z.number().nullable()),
});
export type CheckpointManifest = z.infer<typeof ManifestSchema>;

export const RunStateSchema = z.object({
  runId: z.string(),
  round: z.number().int().min(0),
  /** The next step to run (= steps applied so far): the sampler cursor, PK batches being pure in (seed, epoch, step). */
  nextStep: z.number().int().min(0),
  epoch: z.number().int().min(0),
  seed: z.number().int(),
  /** The training configuration, to refuse resuming a different job. */
  config: z.unknown(),
});
export type RunState = z.infer<typeof RunStateSchema>;

export interface Checkpoint {
  dir: string;
  manifest: CheckpointManifest;
  weights: SavedWeights;
  optimizer: OptimizerState;
  state: RunState;
}

export class CheckpointError extends Error {}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function writeDurable(path: string, data: Uint8Array | string): void {
  writeFileSync(path, data);
  fsyncPath(path);
}

const sha256 = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');

function stepDirs(root: string): string[] {
  if (!existsSync(root)) return [];
  return readdirSync(root).filter(isStepDirName).sort();
}

/** Reads what a checkpoint holds from a live model and optimizer. */
export async function captureCheckpoint(
  model: ModelState,
  updater: ParameterUpdater,
  categories: string[],
  state: RunState,
  metrics: Record<string, number | null>,
): Promise<SaveRequest> {
  return {
    weights: {
      modelConfig: model.arch.config,
      step: state.nextStep,
      categories,
      values: await readState(model),
      shapes: new Map(model.arch.params.map((p) => [p.name, p.shape])),
    },
    optimizer: await updater.state(),
    state,
    metrics,
  };
}

export interface SaveRequest {
  weights: SavedWeights;
  optimizer: OptimizerState;
  state: RunState;
  metrics: Record<string, number | null>;
}

/** A checkpoint could not be written; its partial files are already removed. */
export class CheckpointWriteError extends Error {}

/** The lock file of a checkpoint directory: {pid, host, startedAt} of the process that trains into it. */
export const LOCK_FILE = '.lock';

/**
 * Takes the checkpoint directory for this process: one run writes into a directory at a time (two
 * would prune and replace each other's checkpoints and mix their histories). The lock is a file
 * created exclusively, naming its owner; an owner of this machine that no longer runs (kill -9) left
 * a stale lock, which is taken over. Returns the release (also run when the process exits).
 */
export function lockCheckpointDir(root: string, log: Logger): () => void {
  mkdirSync(root, { recursive: true });
  const path = join(root, LOCK_FILE);
  const me = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString() };
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(path, `${JSON.stringify(me)}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      let owner: { pid?: number; host?: string; startedAt?: string } | undefined;
      try {
        owner = JSON.parse(readFileSync(path, 'utf8'));
      } catch {
        owner = undefined; // half-written by a process killed while taking it
      }
      const ours = owner?.host === me.host && owner.pid === me.pid;
      const stale = !owner || (owner.host === me.host && typeof owner.pid === 'number' && !processRuns(owner.pid));
      if (!ours && !stale) {
        throw new UsageError(
          `--checkpoint-dir ${root} is in use by process ${owner!.pid} on ${owner!.host} (since ${owner!.startedAt}); stop that run or use another directory (if that process is gone, remove ${path})`,
        );
      }
      if (!ours)
        log.warn({ lock: path, owner }, `taking over ${path}: its owner (process ${owner?.pid ?? '?'}) is not running`);
      rmSync(path, { force: true });
    }
  }
  let held = true;
  const release = () => {
    if (!held) return;
    held = false;
    process.removeListener('exit', release);
    try {
      const owner = JSON.parse(readFileSync(path, 'utf8'));
      if (owner.pid === me.pid && owner.host === me.host) rmSync(path, { force: true });
    } catch {
      // already gone
    }
  };
  process.once('exit', release);
  return release;
}

/** Temporary folders of an unfinished save: `.step-NNNNNNNN.tmp-<pid>` and `.latest.tmp-<pid>`. */
const TEMPORARY = /^\.(?:step-\d{8}|latest)\.tmp-(\d+)$/;

/** Whether a process of this machine with that pid runs (one we may not signal runs too). */
function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export class CheckpointStore {
  constructor(
    readonly root: string,
    private readonly keepLast: number,
    private readonly log: Logger,
    /** Gives up the directory's lock (lockCheckpointDir); the process's exit does it too. */
    readonly release: () => void = () => undefined,
  ) {
    this.removeDeadTemporaries();
  }

  /**
   * Removes the temporary folders of saves that died (kill -9, a full disk) so they do not fill the
   * disk run after run. A folder of a process that still runs is left alone (this process's own
   * are stale: nothing of ours is being saved while the store opens).
   */
  private removeDeadTemporaries(): void {
    let names: string[];
    try {
      names = readdirSync(this.root);
    } catch {
      return; // no root yet
    }
    for (const name of names) {
      const m = TEMPORARY.exec(name);
      if (!m) continue;
      const pid = Number(m[1]);
      if (pid !== process.pid && processRuns(pid)) continue;
      rmSync(join(this.root, name), { recursive: true, force: true });
      this.log.warn(
        { removed: join(this.root, name), pid },
        `removed ${join(this.root, name)}: an unfinished checkpoint of process ${pid}, which is not running`,
      );
    }
  }

  /** Writes a checkpoint atomically and updates `latest`; returns its directory and size. */
  save(req: SaveRequest): { dir: string; bytes: number; seconds: number } {
    const name = stepDirName(req.state.nextStep);
    const tmp = join(this.root, `.${name}.tmp-${process.pid}`);
    let written: { dir: string; bytes: number; seconds: number };
    try {
      written = this.write(req, name, tmp);
    } catch (err) {
      // Never leave a partial folder behind; say where, why and how much it needed. (A root that
      // cannot be reached holds nothing to remove: that failure must not hide the first one.)
      try {
        rmSync(tmp, { recursive: true, force: true });
      } catch {
        // nothing was written there
      }
      const e = err as NodeJS.ErrnoException;
      const needed = [...req.weights.values.values(), ...req.optimizer.values].reduce((n, v) => n + v.byteLength, 0);
      const why =
        e.code === 'ENOSPC' ? 'no space left on the device' : e.code === 'EDQUOT' ? 'disk quota exceeded' : e.message;
      throw new CheckpointWriteError(
        `cannot write checkpoint ${name} under ${this.root}: ${why} (a checkpoint needs about ${(needed / 1e6).toFixed(1)} MB free)`,
      );
    }
    // The checkpoint is complete from here on: a failure below is not a failed checkpoint.
    fsyncPath(this.root);
    this.pointLatest(name);
    this.prune(name);
    return written;
  }

  private write(req: SaveRequest, name: string, tmp: string): { dir: string; bytes: number; seconds: number } {
    const t0 = performance.now();
    const dir = join(this.root, name);
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    writeWeightsFiles(tmp, req.weights);
    const opt = req.optimizer;
    const optBytes = Buffer.alloc(opt.values.reduce((s, v) => s + v.byteLength, 0));
    let offset = 0;
    for (const v of opt.values) {
      optBytes.set(new Uint8Array(v.buffer, v.byteOffset, v.byteLength), offset);
      offset += v.byteLength;
    }
    writeDurable(join(tmp, 'optimizer.bin'), optBytes);
    writeDurable(join(tmp, 'optimizer.json'), JSON.stringify({ names: opt.names, shapes: opt.shapes }));
    writeDurable(join(tmp, 'state.json'), JSON.stringify(req.state));
    for (const f of ['model.json', 'weights.bin']) fsyncPath(join(tmp, f));
    const files: CheckpointManifest['files'] = {};
    let bytes = 0;
    for (const f of ['model.json', 'weights.bin', 'optimizer.json', 'optimizer.bin', 'state.json']) {
      const data = readFileSync(join(tmp, f));
      files[f] = { bytes: data.length, sha256: sha256(data) };
      bytes += data.length;
    }
    const manifest: CheckpointManifest = {
      format: MANIFEST_FORMAT,
      step: req.state.nextStep,
      epoch: req.state.epoch,
      createdAt: new Date().toISOString(),
      files,
      metrics: req.metrics,
    };
    writeDurable(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 1));
    fsyncPath(tmp);
    rmSync(dir, { recursive: true, force: true });
    renameSync(tmp, dir);
    return { dir, bytes, seconds: (performance.now() - t0) / 1000 };
  }

  private pointLatest(name: string): void {
    const tmp = join(this.root, `.latest.tmp-${process.pid}`);
    writeDurable(tmp, `${name}\n`);
    renameSync(tmp, join(this.root, 'latest'));
    fsyncPath(this.root);
  }

  /**
   * Keeps the newest keepLast checkpoints, the one with the best validation Recall@1, and the one
   * just written (older folders in the root may carry higher step numbers: another run's, or ones
   * a resume skipped as corrupt).
   */
  private prune(justWritten: string): void {
    const dirs = stepDirs(this.root);
    const keep = new Set([...dirs.slice(-this.keepLast), justWritten]);
    let best: { dir: string; recall: number } | undefined;
    for (const d of dirs) {
      const recall = this.readManifest(join(this.root, d))?.metrics['recall_at_1'];
      if (typeof recall === 'number' && (!best || recall > best.recall)) best = { dir: d, recall };
    }
    if (best) keep.add(best.dir);
    for (const d of dirs) if (!keep.has(d)) rmSync(join(this.root, d), { recursive: true, force: true });
  }

  private readManifest(dir: string): CheckpointManifest | undefined {
    try {
      return ManifestSchema.parse(JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')));
    } catch {
      return undefined;
    }
  }

  /** Why a checkpoint directory cannot be used, or undefined when every file matches its manifest. */
  verify(dir: string): string | undefined {
    if (!existsSync(join(dir, 'manifest.json')))
      return 'no manifest.json (a checkpoint interrupted while being written)';
    const manifest = this.readManifest(dir);
    if (!manifest) return 'manifest.json is not a tricaps checkpoint manifest';
    for (const [file, want] of Object.entries(manifest.files)) {
      const path = join(dir, file);
      if (!existsSync(path)) return `${file} is missing`;
      if (statSync(path).size !== want.bytes)
        return `${file} has ${statSync(path).size} bytes, the manifest says ${want.bytes}`;
      if (sha256(readFileSync(path)) !== want.sha256) return `${file} does not match its sha256 in the manifest`;
    }
    return undefined;
  }

  /**
   * The newest good checkpoint: the one `latest` names if it verifies, else the newest step
   * directory that does. Each one skipped is logged with the reason. Undefined when there is none.
   */
  loadLatest(): Checkpoint | undefined {
    let pointer = existsSync(join(this.root, 'latest'))
      ? readFileSync(join(this.root, 'latest'), 'utf8').trim()
      : undefined;
    if (pointer !== undefined && !isStepDirName(pointer)) {
      this.log.warn(
        { latest: pointer.slice(0, 200) },
        `${join(this.root, 'latest')} does not name a step directory; ignoring it`,
      );
      pointer = undefined;
    }
    const candidates = [...new Set([...(pointer ? [pointer] : []), ...stepDirs(this.root).reverse()])];
    for (const name of candidates) {
      const dir = join(this.root, name);
      if (!existsSync(dir)) {
        this.log.warn(
          { checkpoint: dir },
          `latest names ${name}, which does not exist; looking for an older checkpoint`,
        );
        continue;
      }
      const problem = this.verify(dir);
      if (problem) {
        this.log.warn({ checkpoint: dir, problem }, `skipping checkpoint ${name}: ${problem}; trying the previous one`);
        continue;
      }
      return this.read(dir);
    }
    return undefined;
  }

  private read(dir: string): Checkpoint {
    const manifest = this.readManifest(dir)!;
    const weights = loadWeights(dir);
    const meta = z
      .object({ names: z.array(z.string()), shapes: z.array(z.array(z.number().int().min(0))) })
      .parse(JSON.parse(readFileSync(join(dir, 'optimizer.json'), 'utf8')));
    const bin = readFileSync(join(dir, 'optimizer.bin'));
    const values: Float32Array[] = [];
    let offset = 0;
    for (const shape of meta.shapes) {
      const n = shape.reduce((a, b) => a * b, 1);
      if (offset + n * 4 > bin.length)
        throw new CheckpointError(`${dir}/optimizer.bin is shorter than optimizer.json describes`);
      values.push(new Float32Array(bin.buffer.slice(bin.byteOffset + offset, bin.byteOffset + offset + n * 4)));
      offset += n * 4;
    }
    const state = RunStateSchema.parse(JSON.parse(readFileSync(join(dir, 'state.json'), 'utf8')));
    return { dir, manifest, weights, optimizer: { names: meta.names, shapes: meta.shapes, values }, state };
  }
}

/** Refuses to resume a checkpoint written for a different job, naming what differs. */
export function assertSameJob(saved: unknown, now: Record<string, unknown>, dir: string): void {
  const old = (saved ?? {}) as Record<string, unknown>;
  const differs = Object.keys(now).filter((k) => JSON.stringify(old[k]) !== JSON.stringify(now[k]));
  if (differs.length) {
    throw new UsageError(
      `${dir} was written for a different job (${differs.map((k) => `${k}: ${JSON.stringify(old[k])} then, ${JSON.stringify(now[k])} now`).join('; ')}); resume with the same settings or use another --checkpoint-dir`,
    );
  }
}

/**
 * The checkpoint root of a training run (both training loops): checks the flags that need one,
 * and with --resume loads the newest good checkpoint, refusing one written for another job.
 */
export function openCheckpoints(
  dir: string | undefined,
  opts: { resume: boolean; every: number; keep: number },
  jobKey: Record<string, unknown>,
  log: Logger,
): { store?: CheckpointStore; resumed?: Checkpoint } {
  if ((opts.resume || opts.every > 0) && !dir)
    throw new UsageError('--resume and --checkpoint-every need --checkpoint-dir DIR');
  if (!dir) return {};
  if (statSync(dir, { throwIfNoEntry: false })?.isDirectory() === false) {
    throw new UsageError(
      `--checkpoint-dir ${dir} is a file, not a directory; name a directory (it is created if missing)`,
    );
  }
  const release = lockCheckpointDir(dir, log);
  try {
    const store = new CheckpointStore(dir, opts.keep, log, release);
    if (!opts.resume) return { store };
    const resumed = store.loadLatest();
    if (!resumed) log.info({ checkpointDir: dir }, `no checkpoint under ${dir} to resume from; starting a new run`);
    else assertSameJob(resumed.state.config, jobKey, resumed.dir);
    return { store, resumed };
  } catch (err) {
    release();
    throw err;
  }
}
