// Images cut short, as users meet them: `data inspect --verify-images` finds them (it decodes the way
// training does), `--on-bad-image skip` skips them, and a fleet worker that cannot read its shard
// tells the coordinator, which names the file and stops the run instead of pausing for ever.
import { tricaps } from './cli-runner.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Fleet, TempDirs, TINY, listeningAddress } from './fleet-harness.js';

const temp = new TempDirs('tricaps-data-faults-');
const fleet = new Fleet();
afterEach(() => fleet.cleanup());
afterAll(() => temp.cleanup());

let root = '';
let truncated: string[] = [];
beforeAll(async () => {
  root = join(temp.make(), 'shop');
  const synth = await tricaps(
    'data',
    'synth',
    '--out',
    root,
    '--items',
    '48',
    '--categories',
    '4',
    '--image-size',
    '32',
    '--seed',
    '2',
  );
  expect(synth.code, synth.stderr).toBe(0);
  // Cut every train image of every other train item in half (a copy interrupted, a disk error).
  const rows = readFileSync(join(root, 'Eval/list_eval_partition.txt'), 'utf8')
    .trim()
    .split('\n')
    .slice(2)
    .map((l) => l.split(/\s+/));
  const trainItems = [...new Set(rows.filter((r) => r[2] === 'train').map((r) => r[1]))];
  const bad = new Set(trainItems.filter((_, i) => i % 2 === 0));
  truncated = rows.filter((r) => r[2] === 'train' && bad.has(r[1])).map((r) => r[0]);
  for (const name of truncated) {
    const bytes = readFileSync(join(root, name));
    writeFileSync(join(root, name), bytes.subarray(0, Math.floor(bytes.length / 2)));
  }
}, 120_000);

describe('images cut short', () => {
  it('data inspect --verify-images finds them (exit 2, the file named); with --on-bad-image skip it counts them', async () => {
    const strict = await tricaps('data', 'inspect', '--root', root, '--verify-images');
    expect(strict.code).toBe(2);
    expect(strict.stderr).toMatch(/image .*\.png cannot be decoded/);
    const lenient = await tricaps(
      'data',
      'inspect',
      '--root',
      root,
      '--verify-images',
      '--on-bad-image',
      'skip',
      '--json',
    );
    expect(lenient.code, lenient.stderr).toBe(0);
    const out = JSON.parse(lenient.stdout.trim().split('\n').pop()!);
    expect(out.skipped).toBeGreaterThanOrEqual(truncated.length);
  });

  it('train --on-bad-image skip skips them and trains', async () => {
    const r = await tricaps(
      'train',
      '--data',
      root,
      '--on-bad-image',
      'skip',
      '--engine',
      'wasm',
      '--steps',
      '2',
      '--batch-triplets',
      '4',
      '--image-size',
      '32',
      '--json',
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!).steps).toBe(2);
  });

  it('a fleet worker that cannot read its shard tells the coordinator, which names the file and stops the run', async () => {
    const model = TINY.filter(
      (_, i, a) => !['--items', '--categories'].includes(a[i]) && !['--items', '--categories'].includes(a[i - 1]),
    );
    const coord = fleet.coordinator([...model, '--data', root, '--steps', '5', '--min-workers', '1']);
    const address = await listeningAddress(coord);
    const worker = fleet.worker(address, 'reader');
    // A watchdog, not a hang: before, the coordinator only saw silence and paused at step 0 for ever.
    await coord.waitFor(
      (l) => /could not compute its shards/.test(l.msg),
      60_000,
      "the worker's reason at the coordinator",
    );
    const { code } = await coord.exited;
    expect(code, coord.raw.slice(-6).join('\n')).toBe(2);
    const final = coord.raw.filter((l) => l.startsWith('tricaps: '));
    expect(final).toEqual([
      expect.stringMatching(
        /^tricaps: error: step 0: shard 0 could not be computed on 1 worker \(w1-[0-9a-f]{4}: .*\.png: cannot decode image .*\); stopping the run\. Check the data of this step$/,
      ),
    ]);
    expect(coord.raw.join('\n')).not.toMatch(/complete after/);
    // The worker's reason reached the coordinator: the file is named where the worker was removed.
    expect(coord.lines.some((l) => /could not compute its shards: .*\.png: cannot decode image/.test(l.msg))).toBe(
      true,
    );
    expect((await worker.exited).code).toBe(2);
  });
});
