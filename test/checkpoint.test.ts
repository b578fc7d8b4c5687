// Resumable checkpoints on real processes: kill -9 of the coordinator and resume gives the same
// weights as an uninterrupted run; corrupt or partial checkpoints are skipped for the previous good
// one; the worker reconnects to the restarted coordinator by itself.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Fleet, FleetProcess, listeningAddress, TINY, type LogLine } from './fleet-harness.js';
import { mountSmallDisk } from './helpers.js';

const fleet = new Fleet();
const dirs: string[] = [];
afterEach(async () => {
  await fleet.cleanup();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'tricaps-ckpt-'));
  dirs.push(d);
  return d;
};
const step = (n: number) => `step-${String(n).padStart(8, '0')}`;
const common = [
  ...TINY,
  '--steps',
  '8',
  '--checkpoint-every',
  '2',
  '--seed',
  '9',
  '--min-workers',
  '1',
  '--keep-checkpoints',
  '10',
];
const batches = (lines: LogLine[]) => new Map(lines.map((l) => [l.step as number, l.batch as number]));

async function straightRun(dir: string): Promise<FleetProcess> {
  const coord = fleet.coordinator([...common, '--checkpoint-dir', dir]);
  fleet.worker(await listeningAddress(coord), 'straight');
  expect((await coord.exited).code).toBe(0);
  return coord;
}

describe('checkpoints (real processes)', () => {
  it('kill -9 of the coordinator mid-run and --resume give the weights of an uninterrupted run, every sample once', async () => {
    const a = tempDir();
    const b = tempDir();
    const straight = await straightRun(a);

    const first = fleet.coordinator([...common, '--checkpoint-dir', b]);
    const address = await listeningAddress(first);
    const worker = fleet.worker(address, 'survivor');
    await first.waitFor((l) => /^step 4 loss/.test(l.msg), 60_000, 'step 4');
    first.kill('SIGKILL');
    // The kill landed mid-run: the process died of it (not a finished run's exit 0) before its last step.
    expect(await first.exited).toEqual({ code: null, signal: 'SIGKILL' });
    expect(Math.max(...first.steps().map((l) => l.step as number))).toBeLessThan(7);
    const latest = readFileSync(join(b, 'latest'), 'utf8').trim();
    // The restarted coordinator listens where the first did; the worker finds it by itself.
    const second = fleet.track(
      new FleetProcess(['coordinator', '--listen', address, ...common, '--checkpoint-dir', b, '--resume']),
    );
    const resumed = await second.waitFor((l) => l.msg.startsWith('resuming run'), 60_000, 'the resume line');
    expect(`step-${String(resumed.step).padStart(8, '0')}`).toBe(latest);
    expect(resumed.step as number).toBeGreaterThanOrEqual(4);
    expect(resumed.step as number).toBeLessThan(8); // work was left for the resumed run
    expect((await second.exited).code).toBe(0);
    expect((await worker.exited).code).toBe(0);

    for (const f of ['weights.bin', 'optimizer.bin'])
      expect(readFileSync(join(b, step(8), f)).equals(readFileSync(join(a, step(8), f))), f).toBe(true);
    // The sampler cursor: the resumed run starts at the checkpoint's step and sees the same batches.
    const want = batches(straight.steps());
    const after = second.steps();
    expect(after.map((l) => l.step)).toEqual([...Array(8).keys()].filter((s) => s >= (resumed.step as number)));
    for (const [s, batch] of [...batches(first.steps()), ...batches(after)]) expect(batch).toBe(want.get(s));
  });

  it('skips a corrupt and a partial checkpoint for the previous good one, and says so', async () => {
    const dir = tempDir();
    await straightRun(dir);
    const reference = readFileSync(join(dir, step(8), 'weights.bin'));
    const corrupt = Buffer.from(reference);
    corrupt[100] ^= 0xff;
    writeFileSync(join(dir, step(8), 'weights.bin'), corrupt);
    rmSync(join(dir, step(6), 'manifest.json')); // as if the writer died before the manifest
    const coord = fleet.coordinator([...common, '--checkpoint-dir', dir, '--resume']);
    fleet.worker(await listeningAddress(coord), 'again');
    expect((await coord.exited).code).toBe(0);
    const skipped = coord.lines.filter((l) => l.msg.startsWith('skipping checkpoint')).map((l) => l.msg);
    expect(skipped).toEqual([
      `skipping checkpoint ${step(8)}: weights.bin does not match its sha256 in the manifest; trying the previous one`,
      `skipping checkpoint ${step(6)}: no manifest.json (a checkpoint interrupted while being written); trying the previous one`,
    ]);
    expect(coord.lines.find((l) => l.msg.startsWith('resuming run'))?.step).toBe(4);
    expect(readFileSync(join(dir, step(8), 'weights.bin')).equals(reference)).toBe(true);
    expect(existsSync(join(dir, step(8), 'manifest.json'))).toBe(true);
  });

  it('refuses to resume a checkpoint of a different job', async () => {
    const dir = tempDir();
    await straightRun(dir);
    const p = fleet.coordinator([...common, '--batch-triplets', '10', '--checkpoint-dir', dir, '--resume']);
    expect((await p.exited).code).toBe(2);
    expect(p.raw.join('\n')).toMatch(/was written for a different job \(batchTriplets: 8 then, 10 now\)/);
  });
});

describe('checkpoint faults (real processes)', () => {
  it('a full disk: the periodic checkpoint fails clearly, training goes on, no partial folder stays, workers are not told the run is over', async (ctx) => {
    const dir = tempDir();
    // A 3 MB disk: one checkpoint of this model (1.8 MB) fits, the second does not.
    const unmount = mountSmallDisk(dir, '3m', ctx);
    try {
      const coord = fleet.coordinator([
        ...TINY,
        '--steps',
        '6',
        '--checkpoint-every',
        '2',
        '--min-workers',
        '1',
        '--checkpoint-dir',
        dir,
        '--finish-timeout',
        '2000',
      ]);
      const address = await listeningAddress(coord);
      const worker = fleet.worker(address, 'disk', ['--reconnect-timeout', '120000']);
      const { code } = await coord.exited;
      expect(code, coord.raw.slice(-8).join('\n')).toBe(1);
      // The periodic one failed, named, and the run went on to step 5.
      const failed = coord.lines.find((l) =>
        /cannot write checkpoint step-00000004 under .*: no space left on the device \(a checkpoint needs about \d+\.\d MB free\); training goes on/.test(
          l.msg,
        ),
      );
      expect(failed, coord.raw.join('\n').slice(-2000)).toBeDefined();
      expect(coord.steps().map((l) => l.step)).toEqual([0, 1, 2, 3, 4, 5]);
      // The final one failed too: one line, exit 1, and no "complete ... telling the workers".
      expect(coord.raw.filter((l) => l.startsWith('tricaps: '))).toEqual([
        expect.stringMatching(
          /^tricaps: error: cannot write checkpoint step-00000006 under .*: no space left on the device/,
        ),
      ]);
      expect(coord.raw.join('\n')).not.toMatch(/complete after|telling the workers/);
      // Nothing partial left; the good checkpoint is there.
      const { readdirSync } = await import('node:fs');
      expect(readdirSync(dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
      expect(existsSync(join(dir, step(2), 'manifest.json'))).toBe(true);
      // The worker was not told the run is over: it retries, waiting for a restarted coordinator.
      await worker.waitFor(
        (l) => /^coordinator .* unreachable \(.*\); retrying/.test(l.msg),
        30_000,
        'the worker retrying',
      );
      expect(worker.child.exitCode).toBeNull();
      expect(worker.raw.join('\n')).not.toMatch(/run is over|run .* complete/);
    } finally {
      await fleet.cleanup();
      unmount();
    }
  });

  it('removes the unfinished checkpoints of processes that died (kill -9 mid-save), keeps those of live ones', async () => {
    const { CheckpointStore } = await import('../src/coordinator/checkpoint.js');
    const { spawnSync } = await import('node:child_process');
    const { mkdirSync, readdirSync } = await import('node:fs');
    const pino = (await import('pino')).default;
    const dir = tempDir();
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!; // ran and exited: that pid is gone
    mkdirSync(join(dir, `.${step(4)}.tmp-${dead}`));
    writeFileSync(join(dir, `.${step(4)}.tmp-${dead}`, 'weights.bin'), Buffer.alloc(1024));
    writeFileSync(join(dir, `.latest.tmp-${dead}`), 'step-00000004\n');
    mkdirSync(join(dir, `.${step(6)}.tmp-${process.ppid}`)); // a live process (vitest's parent)
    const messages: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => messages.push(JSON.parse(line).msg) });
    new CheckpointStore(dir, 3, log);
    expect(readdirSync(dir).sort()).toEqual([`.${step(6)}.tmp-${process.ppid}`]);
    expect(messages).toEqual(
      expect.arrayContaining([
        expect.stringMatching(
          new RegExp(
            `removed .*\\.${step(4)}\\.tmp-${dead}: an unfinished checkpoint of process ${dead}, which is not running`,
          ),
        ),
      ]),
    );
  });
});

describe('one run per checkpoint directory (real processes)', () => {
  it('a second coordinator on the same --checkpoint-dir refuses to start and names the owner; after kill -9 the lock is taken over', async () => {
    const dir = tempDir();
    const first = fleet.coordinator([...TINY, '--steps', '1000', '--checkpoint-dir', dir]);
    await listeningAddress(first);
    const second = fleet.coordinator([...TINY, '--steps', '10', '--checkpoint-dir', dir]);
    const { code } = await second.exited;
    expect(code).toBe(2);
    expect(second.raw.filter((l) => l.startsWith('tricaps: '))).toEqual([
      expect.stringMatching(
        new RegExp(
          `^tricaps: error: --checkpoint-dir .* is in use by process ${first.child.pid} on \\S+ \\(since .*\\); stop that run or use another directory`,
        ),
      ),
    ]);
    first.kill('SIGKILL');
    await first.exited;
    const third = fleet.coordinator([...TINY, '--steps', '10', '--checkpoint-dir', dir]);
    await listeningAddress(third);
    expect(
      third.lines.some((l) =>
        new RegExp(`taking over .*\\.lock: its owner \\(process ${first.child.pid}\\) is not running`).test(l.msg),
      ),
    ).toBe(true);
    third.kill('SIGTERM');
    await third.exited;
    // A clean stop gives the directory back.
    expect(existsSync(join(dir, '.lock'))).toBe(false);
  });
});

describe('coordinator restarts (real processes)', () => {
  it('a coordinator restarted with --resume never reuses a member id: both workers notice, register again, and the run completes', async () => {
    const dir = tempDir();
    const args = [
      ...TINY,
      '--steps',
      '10',
      '--checkpoint-every',
      '2',
      '--min-workers',
      '2',
      '--checkpoint-dir',
      dir,
      '--heartbeat-timeout',
      '3000',
    ];
    const first = fleet.coordinator(args);
    const address = await listeningAddress(first);
    const workers = ['a', 'b'].map((n) => fleet.worker(address, n, ['--reconnect-timeout', '120000']));
    await first.waitFor((l) => /^step 3 loss/.test(l.msg), 120_000, 'step 3');
    const firstIds = first.lines.filter((l) => /joined/.test(l.msg)).map((l) => l.worker as string);
    first.kill('SIGKILL');
    await first.exited;
    const second = fleet.track(new FleetProcess(['coordinator', '--listen', address, ...args, '--resume']));
    // A watchdog, not a hang: with reused ids the restarted run paused for ever at "1 of --min-workers 2".
    await second.waitFor(
      (l) => /complete after \d+ steps/.test(l.msg),
      120_000,
      'the restarted run to complete with both workers',
    );
    expect((await second.exited).code).toBe(0);
    for (const w of workers) expect((await w.exited).code).toBe(0);
    const secondIds = second.lines.filter((l) => /joined/.test(l.msg)).map((l) => l.worker as string);
    expect(secondIds).toHaveLength(2);
    for (const id of secondIds) expect(firstIds).not.toContain(id);
    // Every step after the resume ran with both workers.
    const resumedAt = second.lines.find((l) => l.msg.startsWith('resuming run'))!.step as number;
    expect(second.steps().map((l) => [l.step, l.workers])).toEqual(
      [...Array(10).keys()].filter((s) => s >= resumedAt).map((s) => [s, 2]),
    );
  });
});
