// The checkpoint store without a training run: atomic layout, the `latest` pointer, fallbacks and
// retention (last N plus the best by Recall@1), and Adam state that round-trips exactly.
import { describe, expect, it } from 'vitest';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { pino } from 'pino';
import {
  assertSameJob,
  CheckpointStore,
  CheckpointWriteError,
  lockCheckpointDir,
  LOCK_FILE,
  openCheckpoints,
  type SaveRequest,
} from '../../src/coordinator/checkpoint.js';
import { spawn, spawnSync } from 'node:child_process';
import { hostname } from 'node:os';
import { ParameterUpdater } from '../../src/coordinator/optimizer.js';
import { OptimizerConfigSchema } from '../../src/shared/optimizer-config.js';
import { modelConfig } from '../../src/shared/model/config.js';
import { loadWeights, resolveCheckpoint, stepDirName, writeWeightsFiles } from '../../src/shared/checkpoint-format.js';
import { isStepDirName } from '../../src/shared/paths.js';
import { mountSmallDisk, useBackend } from '../helpers.js';
import { tinyModel } from '../tiny-model.js';

const lines: string[] = [];
/** Whole log records (their fields are what a log search finds). */
const records: Record<string, unknown>[] = [];
const log = pino(
  { level: 'info' },
  {
    write: (l: string) => {
      const record = JSON.parse(l);
      records.push(record);
      lines.push(record.msg);
    },
  },
);

function request(nextStep: number, recall: number | null): SaveRequest {
  return {
    weights: {
      modelConfig: modelConfig({}),
      step: nextStep,
      categories: ['a'],
      values: new Map([['w', Float32Array.of(nextStep, 2)]]),
      shapes: new Map([['w', [2]]]),
    },
    optimizer: {
      names: ['iter', 'accBeta1', 'accBeta2'],
      shapes: [[1], [1], [1]],
      values: [Float32Array.of(nextStep), Float32Array.of(0.9), Float32Array.of(0.99)],
    },
    state: { runId: 'r', round: 2, nextStep, epoch: 0, seed: 1, config: { x: 1 } },
    metrics: { loss: 1, recall_at_1: recall },
  };
}

describe('checkpoint store', () => {
  it('keeps the newest N and the best by Recall@1, points latest at the newest, falls back when latest is gone', () => {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
    try {
      const store = new CheckpointStore(root, 2, log);
      expect(store.loadLatest()).toBeUndefined();
      store.save(request(1, 0.2));
      store.save(request(2, 0.5));
      store.save(request(3, 0.1));
      store.save(request(4, null));
      expect(
        readdirSync(root)
          .filter((d) => d.startsWith('step-'))
          .sort(),
      ).toEqual(['step-00000002', 'step-00000003', 'step-00000004']);
      expect(store.loadLatest()?.state.nextStep).toBe(4);
      expect(resolveCheckpoint(root)).toBe(join(root, 'step-00000004'));
      rmSync(join(root, 'step-00000004'), { recursive: true });
      lines.length = 0;
      const back = store.loadLatest()!;
      expect(back.state.nextStep).toBe(3);
      expect(Array.from(back.weights.values.get('w')!)).toEqual([3, 2]);
      expect(lines).toContain('latest names step-00000004, which does not exist; looking for an older checkpoint');
      expect(records.at(-1)).toMatchObject({ checkpoint: join(root, 'step-00000004') });
      writeFileSync(join(root, 'step-00000003', 'manifest.json'), '{"format": "something else"}');
      expect(store.loadLatest()?.state.nextStep).toBe(2);
      expect(lines.at(-1)).toMatch(
        /skipping checkpoint step-00000003: manifest.json is not a tricaps checkpoint manifest/,
      );
      expect(records.at(-1)).toMatchObject({
        checkpoint: join(root, 'step-00000003'),
        problem: 'manifest.json is not a tricaps checkpoint manifest',
      });
      expect(existsSync(join(root, 'latest'))).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('takes only step-NNNNNNNN folders for checkpoints: a half-written one or a look-alike is not one', () => {
    expect(isStepDirName('step-00000012')).toBe(true);
    for (const name of [
      'step-00000012.tmp-4f2a', // being written (renamed into place when complete)
      'step-00000012x',
      'step-0000012', // seven digits
      'step-000000123', // nine
      'xstep-00000012',
      'step-0000001a',
      'step-',
      '../step-00000012',
    ])
      expect(isStepDirName(name), name).toBe(false);
  });

  it('never prunes the checkpoint it has just written, even below higher-numbered folders', () => {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
    try {
      const earlier = new CheckpointStore(root, 1, log);
      earlier.save(request(300, null)); // an earlier run's checkpoint in the same root
      const store = new CheckpointStore(root, 1, log);
      const { dir } = store.save(request(10, null));
      expect(dir).toBe(join(root, 'step-00000010'));
      expect(existsSync(join(dir, 'manifest.json'))).toBe(true);
      expect(store.loadLatest()?.state.nextStep).toBe(10);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('keeps the newest N by step number whatever order the folders were written in; a tie for the best keeps the first', () => {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
    try {
      // Saved out of order (a resumed run, another run's folders): the numbers decide, not the
      // directory listing's order.
      const order = [7, 2, 9, 4, 1, 8, 3, 6, 5];
      const store = new CheckpointStore(root, 3, log);
      for (const step of order) store.save(request(step, null));
      const steps = () =>
        readdirSync(root)
          .filter(isStepDirName)
          .sort()
          .map((d) => Number(d.slice(5)));
      // After the last save (5): the three highest and the one just written.
      expect(steps()).toEqual([5, 7, 8, 9]);
      const tie = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
      try {
        const keepOne = new CheckpointStore(tie, 1, log);
        keepOne.save(request(1, 0.5));
        keepOne.save(request(2, 0.5)); // as good, not better: step 1 stays the best
        keepOne.save(request(3, 0.1));
        expect(readdirSync(tie).filter(isStepDirName).sort()).toEqual(['step-00000001', 'step-00000003']);
      } finally {
        rmSync(tie, { recursive: true, force: true });
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('creates its root on the first save, overwrites a step saved again, and replaces its own stray temporary', () => {
    const parent = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
    try {
      const root = join(parent, 'not', 'yet');
      const store = new CheckpointStore(root, 3, log);
      lines.length = 0;
      expect(store.loadLatest()).toBeUndefined(); // no root yet: nothing to resume, no error
      expect(lines).toEqual([]);
      const first = store.save(request(5, null));
      expect(first.dir).toBe(join(root, 'step-00000005'));
      // Its size is what the files hold, its duration a plausible number of seconds.
      const files = readdirSync(first.dir).filter((f) => f !== 'manifest.json');
      expect(first.bytes).toBe(files.reduce((n, f) => n + readFileSync(join(first.dir, f)).length, 0));
      expect(first.seconds).toBeGreaterThanOrEqual(0);
      expect(first.seconds).toBeLessThan(30);
      // A temporary of this process left since the store opened (with files in it) is replaced.
      const stray = join(root, `.step-00000005.tmp-${process.pid}`);
      mkdirSync(stray);
      writeFileSync(join(stray, 'stray.bin'), 'left over');
      const again = { ...request(5, null), metrics: { loss: 0.25, recall_at_1: null } };
      store.save(again); // the same step once more (a run resumed at a step it had saved)
      expect(readdirSync(join(root, 'step-00000005'))).not.toContain('stray.bin');
      expect(store.loadLatest()?.manifest.metrics['loss']).toBe(0.25);
      expect(readdirSync(root).filter((n) => n.includes('.tmp-'))).toEqual([]);
    } finally {
      rmSync(parent, { recursive: true, force: true });
    }
  });

  it('round-trips optimizer state of any shape, and refuses an optimizer.bin shorter than its description', () => {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-store-'));
    try {
      const store = new CheckpointStore(root, 3, log);
      const shapes = [[1], [2, 3], [4], [0], [3]];
      const values = shapes.map((shape, k) =>
        Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, (_, i) => 10 * k + i + 0.5),
      );
      const names = shapes.map((_, k) => `m${k}`);
      const { dir } = store.save({ ...request(1, null), optimizer: { names, shapes, values } });
      const back = store.loadLatest()!;
      expect(back.optimizer.names).toEqual(names);
      expect(back.optimizer.shapes).toEqual(shapes);
      expect(back.optimizer.values.map((v) => Array.from(v))).toEqual(values.map((v) => Array.from(v)));
      // A checkpoint whose files match their manifest but whose optimizer.bin is too short for what
      // optimizer.json describes (written by something else): refused, named.
      const bin = readFileSync(join(dir, 'optimizer.bin'));
      const short = bin.subarray(0, bin.length - 4);
      writeFileSync(join(dir, 'optimizer.bin'), short);
      const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
      manifest.files['optimizer.bin'] = {
        bytes: short.length,
        sha256: createHash('sha256').update(short).digest('hex'),
      };
      writeFileSync(join(dir, 'manifest.json'), JSON.stringify(manifest));
      expect(store.verify(dir)).toBeUndefined();
      expect(() => store.loadLatest()).toThrow(`${dir}/optimizer.bin is shorter than optimizer.json describes`);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a full disk: the save fails naming the device and the space it needs, and leaves no partial folder', async (ctx) => {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-full-'));
    try {
      const unmount = mountSmallDisk(root, '64k', ctx);
      try {
        const store = new CheckpointStore(root, 3, log);
        const big = request(1, null);
        big.weights.values.set('w', new Float32Array(100_000)); // 400 kB on a 64 kB disk
        big.weights.shapes.set('w', [100_000]);
        expect(() => store.save(big)).toThrow(
          `cannot write checkpoint step-00000001 under ${root}: no space left on the device (a checkpoint needs about 0.4 MB free)`,
        );
        expect(readdirSync(root)).toEqual([]);
      } finally {
        unmount();
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('round-trips Adam exactly: a restored optimizer takes the same next step', async () => {
    await useBackend('cpu');
    const grads = (m: ReturnType<typeof tinyModel>, k: number) =>
      new Map([...m.trainable].map(([n, v]) => [n, tf.fill(v.shape, 0.01 * k + 0.001)]));
    const a = tinyModel();
    const ua = new ParameterUpdater(a, OptimizerConfigSchema.parse({}));
    for (let k = 1; k <= 3; k++) ua.apply(grads(a, k), new Map(), 0);
    const saved = await ua.state();
    const b = tinyModel();
    for (const [n, v] of a.trainable) b.trainable.get(n)!.assign(v);
    const ub = new ParameterUpdater(b, OptimizerConfigSchema.parse({}));
    await ub.restore(saved);
    ua.apply(grads(a, 4), new Map(), 0);
    ub.apply(grads(b, 4), new Map(), 0);
    for (const [n, v] of a.trainable)
      expect(Array.from(b.trainable.get(n)!.dataSync())).toEqual(Array.from(v.dataSync()));
    await expect(
      ub.restore({
        ...saved,
        values: saved.values.slice(0, 5),
        names: saved.names.slice(0, 5),
        shapes: saved.shapes.slice(0, 5),
      }),
    ).rejects.toThrow(/optimizer state has 2 moment tensors; this model needs/);
    const wrongShape = { ...saved, shapes: saved.shapes.map((sh, i) => (i === 3 ? [sh[0] + 1, ...sh.slice(1)] : sh)) };
    await expect(new ParameterUpdater(b, OptimizerConfigSchema.parse({})).restore(wrongShape)).rejects.toThrow(
      /optimizer moment .* has shape \[\d+/,
    );
    ua.dispose();
    ub.dispose();
    a.dispose();
    b.dispose();
  });

  for (const backend of ['cpu', 'wasm'] as const) {
    it(`host Adam is tfjs's Adam bit for bit (${backend}): same weights, statistics and checkpoint; each restores the other`, async () => {
      await useBackend(backend);
      // Gradients of mixed signs and magnitudes (from 1e-8 to 10), different every step.
      const gradients = (m: ReturnType<typeof tinyModel>, k: number) =>
        new Map(
          [...m.trainable].map(([n, v]) => [
            n,
            Float32Array.from({ length: v.size }, (_, i) => Math.sin(i * 0.37 + k) * 10 ** ((i % 10) - 8)),
          ]),
        );
      const stats = (m: ReturnType<typeof tinyModel>, k: number) =>
        new Map([...m.buffers].map(([n, v]) => [n, Float32Array.from({ length: v.size }, (_, i) => 1 + 0.1 * k + i)]));
      const cfg = OptimizerConfigSchema.parse({ learningRate: 3e-3 });
      const device = tinyModel();
      const host = tinyModel();
      const onDevice = new ParameterUpdater(device, cfg);
      const onHost = new ParameterUpdater(host, cfg, 'host');
      for (let k = 1; k <= 4; k++) {
        await onDevice.applyHost(gradients(device, k), stats(device, k), k >> 1);
        await onHost.applyHost(gradients(host, k), stats(host, k), k >> 1);
      }
      const read = async (m: ReturnType<typeof tinyModel>) =>
        Promise.all([...m.trainable.values(), ...m.buffers.values()].map(async (v) => Array.from(await v.data())));
      expect(await read(host)).toEqual(await read(device));
      const vector = await onHost.weightsVector();
      expect(Array.from(vector!)).toEqual((await read(device)).flat());
      expect(await onDevice.weightsVector()).toBeUndefined();
      const a = await onDevice.state();
      const b = await onHost.state();
      // Moment names are "<variable>/m": the variables' names carry their model's instance prefix.
      const unprefixed = (names: string[]) => names.map((n) => n.replace(/^m\d+\//, ''));
      expect(unprefixed(b.names)).toEqual(unprefixed(a.names));
      expect(b.names[3]).toMatch(/^m\d+\/stem\/conv\/kernel\/m$/);
      expect(b.shapes).toEqual(a.shapes);
      expect(b.values.map((v) => Array.from(v))).toEqual(a.values.map((v) => Array.from(v)));
      // Each mode's checkpoint restores into the other and the next step agrees.
      const twinDevice = tinyModel();
      const twinHost = tinyModel();
      for (const [n, v] of device.trainable) {
        twinDevice.trainable.get(n)!.assign(v);
        twinHost.trainable.get(n)!.assign(v);
      }
      for (const [n, v] of device.buffers) {
        twinDevice.buffers.get(n)!.assign(v);
        twinHost.buffers.get(n)!.assign(v);
      }
      const fromHost = new ParameterUpdater(twinDevice, cfg);
      await fromHost.restore(b);
      const fromDevice = new ParameterUpdater(twinHost, cfg, 'host');
      await fromDevice.restore(a);
      await fromHost.applyHost(gradients(twinDevice, 5), new Map(), 2);
      await fromDevice.applyHost(gradients(twinHost, 5), new Map(), 2);
      await onHost.applyHost(gradients(host, 5), new Map(), 2);
      expect(await read(twinDevice)).toEqual(await read(host));
      expect(await read(twinHost)).toEqual(await read(host));
      await expect(fromDevice.restore(a)).rejects.toThrow(/restore\(\) after the first step/);
      expect(() => onHost.apply(new Map(), new Map(), 0)).toThrow(/keeps Adam on the host/);
      await expect(onHost.applyHost(new Map([['nope', new Float32Array(1)]]), new Map(), 0)).rejects.toThrow(
        /gradient for unknown parameter nope/,
      );
      for (const x of [onDevice, onHost, fromHost, fromDevice]) x.dispose();
      for (const x of [device, host, twinDevice, twinHost]) x.dispose();
    });
  }
});

describe('checkpoint weights format', () => {
  const weights = () => ({
    modelConfig: modelConfig({}),
    step: 12,
    categories: ['tee', 'dress'],
    values: new Map([
      ['conv/kernel', Float32Array.of(1.5, -2, 3.25)],
      ['bn/gamma', Float32Array.of(7, 8)],
      ['bn/beta', Float32Array.of(-0.5)],
    ]),
    shapes: new Map([
      ['conv/kernel', [1, 3]],
      ['bn/gamma', [2]],
      ['bn/beta', [1]],
    ]),
  });

  function withRoot(body: (root: string) => void): void {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-format-'));
    try {
      body(root);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }

  it('round-trips every tensor at its own offset, in manifest order', () =>
    withRoot((root) => {
      writeWeightsFiles(root, weights());
      const bin = readFileSync(join(root, 'weights.bin'));
      expect(Array.from(new Float32Array(bin.buffer, bin.byteOffset, bin.length / 4))).toEqual([
        1.5, -2, 3.25, 7, 8, -0.5,
      ]);
      const back = loadWeights(root);
      expect(back.step).toBe(12);
      expect(back.categories).toEqual(['tee', 'dress']);
      expect([...back.values].map(([n, v]) => [n, Array.from(v)])).toEqual([
        ['conv/kernel', [1.5, -2, 3.25]],
        ['bn/gamma', [7, 8]],
        ['bn/beta', [-0.5]],
      ]);
      expect(back.shapes.get('conv/kernel')).toEqual([1, 3]);
    }));

  it('refuses a missing, truncated or over-long weights file, and a model.json of something else', () =>
    withRoot((root) => {
      expect(() => loadWeights(root)).toThrow(
        /no model\.json; pass a directory written by `tricaps train --checkpoint-dir`/,
      );
      writeWeightsFiles(root, weights());
      const bin = join(root, 'weights.bin');
      const whole = readFileSync(bin);
      truncateSync(bin, whole.length - 4);
      expect(() => loadWeights(root)).toThrow(
        /weights\.bin: 20 bytes, the manifest needs 24; the checkpoint is truncated or corrupt/,
      );
      writeFileSync(bin, Buffer.concat([whole, Buffer.alloc(4)]));
      expect(() => loadWeights(root)).toThrow(/28 bytes, the manifest needs 24/);
      rmSync(bin);
      expect(() => loadWeights(root)).toThrow(/weights\.bin: missing weights file/);
      writeFileSync(join(root, 'model.json'), JSON.stringify({ format: 'other' }));
      expect(() => loadWeights(root)).toThrow(/model\.json: not a tricaps checkpoint \(format: /);
      writeFileSync(join(root, 'model.json'), '{ not json');
      expect(() => loadWeights(root)).toThrow(/model\.json: not a tricaps checkpoint \(/);
    }));

  it('resolves a checkpoint directory itself, the step latest names, else the newest complete step', () =>
    withRoot((root) => {
      const save = (step: number) => {
        const dir = join(root, stepDirName(step));
        mkdirSync(dir);
        writeWeightsFiles(dir, { ...weights(), step });
        return dir;
      };
      expect(() => resolveCheckpoint(join(root, 'absent'))).toThrow(/absent: no such checkpoint directory/);
      expect(() => resolveCheckpoint(root)).toThrow(
        /holds no checkpoint \(no model\.json, no step-\* directories\); train with --checkpoint-dir/,
      );
      const two = save(2);
      const nine = save(9);
      const ten = save(10);
      expect(resolveCheckpoint(two)).toBe(two);
      // No latest: the newest complete step by number (fixed width, so 10 after 9).
      expect(resolveCheckpoint(root)).toBe(ten);
      // latest wins over the newest (the store points it at the checkpoint it trusts).
      writeFileSync(join(root, 'latest'), `${stepDirName(2)}\n`);
      expect(resolveCheckpoint(root)).toBe(two);
      // A latest that names nothing usable falls back to the newest complete step.
      for (const named of ['step-00000077', '../' + stepDirName(2), 'weights.bin', '']) {
        writeFileSync(join(root, 'latest'), named);
        expect(resolveCheckpoint(root), named).toBe(ten);
      }
      // Folders that are not complete step checkpoints are never chosen.
      mkdirSync(join(root, stepDirName(11))); // half written: no model.json
      for (const lookAlike of ['step-00000012.tmp-1', 'xstep-00000013', 'step-0000014', 'step-000000015']) {
        mkdirSync(join(root, lookAlike));
        writeWeightsFiles(join(root, lookAlike), weights());
      }
      expect(resolveCheckpoint(root)).toBe(ten);
      rmSync(ten, { recursive: true });
      expect(resolveCheckpoint(root)).toBe(nine);
    }));
});

describe('checkpoint directory: lock, leftovers, verification, job', () => {
  function withRoot(body: (root: string) => void | Promise<void>): Promise<void> {
    const root = mkdtempSync(join(tmpdir(), 'tricaps-lock-'));
    return Promise.resolve(body(root)).finally(() => rmSync(root, { recursive: true, force: true }));
  }
  /** The pid of a process that ran and is gone. */
  const deadPid = () => spawnSync(process.execPath, ['-e', '0']).pid!;
  const writeLock = (root: string, owner: object) => writeFileSync(join(root, LOCK_FILE), JSON.stringify(owner));

  it('one process at a time: a live owner is named and refused, a dead or half-written one is taken over', () =>
    withRoot(async (root) => {
      const live = spawn('sleep', ['30']);
      try {
        writeLock(root, { pid: live.pid, host: hostname(), startedAt: 'then' });
        expect(() => lockCheckpointDir(root, log)).toThrow(
          `--checkpoint-dir ${root} is in use by process ${live.pid} on ${hostname()} (since then); stop that run or use another directory (if that process is gone, remove ${join(root, LOCK_FILE)})`,
        );
        // On another machine: whether it runs cannot be told, so it is not taken over.
        writeLock(root, { pid: deadPid(), host: 'another-host', startedAt: 'then' });
        expect(() => lockCheckpointDir(root, log)).toThrow(/is in use by process \d+ on another-host/);
      } finally {
        live.kill('SIGKILL');
      }
      const gone = deadPid();
      writeLock(root, { pid: gone, host: hostname(), startedAt: 'then' });
      lines.length = 0;
      const release = lockCheckpointDir(root, log);
      expect(lines).toEqual([`taking over ${join(root, LOCK_FILE)}: its owner (process ${gone}) is not running`]);
      expect(records.at(-1)).toMatchObject({ lock: join(root, LOCK_FILE), owner: { pid: gone, host: hostname() } });
      expect(JSON.parse(readFileSync(join(root, LOCK_FILE), 'utf8'))).toMatchObject({
        pid: process.pid,
        host: hostname(),
      });
      // Taken again by its own process (a resumed store in the same process): no warning.
      lines.length = 0;
      lockCheckpointDir(root, log);
      expect(lines).toEqual([]);
      release();
      expect(existsSync(join(root, LOCK_FILE))).toBe(false);
      writeFileSync(join(root, LOCK_FILE), '{"pid": 12'); // half written
      const again = lockCheckpointDir(root, log);
      // A release leaves a lock that is no longer ours alone (same pid on another machine, another
      // pid on this one), and runs once: a second call never removes a lock taken since.
      writeLock(root, { pid: process.pid, host: 'another-host' });
      again();
      expect(existsSync(join(root, LOCK_FILE))).toBe(true);
      rmSync(join(root, LOCK_FILE));
      const third = lockCheckpointDir(root, log);
      writeLock(root, { pid: 1, host: hostname() });
      third();
      expect(existsSync(join(root, LOCK_FILE))).toBe(true);
      rmSync(join(root, LOCK_FILE));
      const fourth = lockCheckpointDir(root, log);
      fourth();
      expect(existsSync(join(root, LOCK_FILE))).toBe(false);
      const fifth = lockCheckpointDir(root, log);
      fourth();
      expect(existsSync(join(root, LOCK_FILE))).toBe(true);
      fifth();
      expect(existsSync(join(root, LOCK_FILE))).toBe(false);
    }));

  it('removes the unfinished saves of processes that are gone (and its own), never those of live ones', () =>
    withRoot(async (root) => {
      const live = spawn('sleep', ['30']);
      try {
        const gone = deadPid();
        const names = [
          `.step-00000003.tmp-${gone}`,
          `.latest.tmp-${gone}`,
          `.step-00000004.tmp-${process.pid}`,
          `.step-00000005.tmp-${live.pid}`,
          `step-00000006.tmp-${gone}`, // not a temporary of ours: left alone
          `.step-0000007.tmp-${gone}`,
        ];
        // Each holds what a save had written before it died.
        for (const n of names) {
          mkdirSync(join(root, n));
          writeFileSync(join(root, n, 'weights.bin'), 'partial');
        }
        lines.length = 0;
        records.length = 0;
        new CheckpointStore(root, 2, log);
        expect(readdirSync(root).sort()).toEqual(
          [`.step-00000005.tmp-${live.pid}`, `.step-0000007.tmp-${gone}`, `step-00000006.tmp-${gone}`].sort(),
        );
        expect(lines.sort()).toEqual(
          [
            `removed ${join(root, `.step-00000003.tmp-${gone}`)}: an unfinished checkpoint of process ${gone}, which is not running`,
            `removed ${join(root, `.latest.tmp-${gone}`)}: an unfinished checkpoint of process ${gone}, which is not running`,
            `removed ${join(root, `.step-00000004.tmp-${process.pid}`)}: an unfinished checkpoint of process ${process.pid}, which is not running`,
          ].sort(),
        );
        expect(records).toContainEqual(
          expect.objectContaining({ removed: join(root, `.latest.tmp-${gone}`), pid: gone }),
        );
      } finally {
        live.kill('SIGKILL');
      }
    }));

  it('verifies every file against its manifest, and says which and how it differs', () =>
    withRoot((root) => {
      const store = new CheckpointStore(root, 5, log);
      const { dir } = store.save(request(1, null));
      expect(store.verify(dir)).toBeUndefined();
      const manifest = readFileSync(join(dir, 'manifest.json'), 'utf8');
      const state = readFileSync(join(dir, 'state.json'));
      writeFileSync(join(dir, 'state.json'), Buffer.from(state.toString().replace('"r"', '"q"')));
      expect(store.verify(dir)).toBe('state.json does not match its sha256 in the manifest');
      writeFileSync(join(dir, 'state.json'), Buffer.concat([state, Buffer.from(' ')]));
      expect(store.verify(dir)).toBe(`state.json has ${state.length + 1} bytes, the manifest says ${state.length}`);
      rmSync(join(dir, 'state.json'));
      expect(store.verify(dir)).toBe('state.json is missing');
      writeFileSync(join(dir, 'manifest.json'), manifest.replace('tricaps-checkpoint-v1', 'other'));
      expect(store.verify(dir)).toBe('manifest.json is not a tricaps checkpoint manifest');
      rmSync(join(dir, 'manifest.json'));
      expect(store.verify(dir)).toBe('no manifest.json (a checkpoint interrupted while being written)');
    }));

  it('ignores a latest that names no step directory, and fails a save cleanly, naming where and why', () =>
    withRoot((root) => {
      const store = new CheckpointStore(root, 5, log);
      store.save(request(1, null));
      store.save(request(2, null));
      writeFileSync(join(root, 'latest'), '../../etc\n');
      lines.length = 0;
      expect(store.loadLatest()?.state.nextStep).toBe(2);
      expect(lines).toEqual([`${join(root, 'latest')} does not name a step directory; ignoring it`]);
      expect(records.at(-1)).toMatchObject({ latest: '../../etc' });
      // What it names is logged cut to size (a pointer file can hold anything).
      writeFileSync(join(root, 'latest'), 'x'.repeat(5000));
      expect(store.loadLatest()?.state.nextStep).toBe(2);
      expect(records.at(-1)).toMatchObject({ latest: 'x'.repeat(200) });
      // A root that cannot hold folders (here: a file): the save fails, nothing is left behind.
      const blocked = join(root, 'a-file');
      writeFileSync(blocked, '');
      const broken = new CheckpointStore(blocked, 5, log);
      expect(() => broken.save(request(3, null))).toThrow(
        new RegExp(
          `^cannot write checkpoint step-00000003 under ${blocked}: ENOTDIR.* \\(a checkpoint needs about 0\\.0 MB free\\)$`,
        ),
      );
      expect(() => broken.save(request(3, null))).toThrow(CheckpointWriteError);
    }));

  it('refuses to resume another job, naming every setting that differs', () => {
    expect(() => assertSameJob({ seed: 1, shards: 2 }, { seed: 1, shards: 2 }, 'ck')).not.toThrow();
    expect(() => assertSameJob({ seed: 1, shards: 2, lr: 3 }, { seed: 4, shards: 2, lr: 5 }, 'ck')).toThrow(
      'ck was written for a different job (seed: 1 then, 4 now; lr: 3 then, 5 now); resume with the same settings or use another --checkpoint-dir',
    );
    expect(() => assertSameJob(undefined, { seed: 1 }, 'ck')).toThrow(/\(seed: undefined then, 1 now\)/);
  });

  it('opens a checkpoint root only with the flags that need one, and gives its lock back when it cannot resume', () =>
    withRoot((root) => {
      expect(() => openCheckpoints(undefined, { resume: true, every: 0, keep: 2 }, {}, log)).toThrow(
        '--resume and --checkpoint-every need --checkpoint-dir DIR',
      );
      expect(() => openCheckpoints(undefined, { resume: false, every: 5, keep: 2 }, {}, log)).toThrow(
        /need --checkpoint-dir DIR/,
      );
      expect(openCheckpoints(undefined, { resume: false, every: 0, keep: 2 }, {}, log)).toEqual({});
      writeFileSync(join(root, 'file'), '');
      expect(() => openCheckpoints(join(root, 'file'), { resume: false, every: 0, keep: 2 }, {}, log)).toThrow(
        `--checkpoint-dir ${join(root, 'file')} is a file, not a directory; name a directory (it is created if missing)`,
      );
      const dir = join(root, 'ck');
      lines.length = 0;
      const empty = openCheckpoints(dir, { resume: true, every: 0, keep: 2 }, { config: 1 }, log);
      expect(empty.resumed).toBeUndefined();
      expect(lines).toEqual([`no checkpoint under ${dir} to resume from; starting a new run`]);
      expect(records.at(-1)).toMatchObject({ checkpointDir: dir });
      empty.store!.save(request(4, null)); // its state.config is { x: 1 }
      empty.store!.release();
      const fresh = openCheckpoints(dir, { resume: false, every: 0, keep: 2 }, {}, log);
      expect(fresh.resumed).toBeUndefined();
      fresh.store!.release();
      expect(openCheckpoints(dir, { resume: true, every: 0, keep: 2 }, { x: 1 }, log).resumed?.state.nextStep).toBe(4);
      // Same process: its own lock is taken again; another job is refused and the lock given back.
      expect(() => openCheckpoints(dir, { resume: true, every: 0, keep: 2 }, { x: 2 }, log)).toThrow(
        /was written for a different job \(x: 1 then, 2 now\)/,
      );
      expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
    }));
});
