// The `tricaps` command as a user types it: real child processes of dist/cli.js.
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { lastJsonLine, tricaps, tricapsWithLogLevel } from './cli-runner.js';

describe('tricaps CLI', () => {
  it('model summary prints the reference parameter counts as JSON', async () => {
    const sc = await tricaps(
      'model',
      'summary',
      '--variant',
      'sc',
      '--image-size',
      '256',
      '--categories',
      '23',
      '--json',
    );
    expect(sc.code).toBe(0);
    expect(JSON.parse(sc.stdout).params).toEqual({ total: 2_425_536, trainable: 2_425_024, nonTrainable: 512 });
    const rc = await tricaps(
      'model',
      'summary',
      '--variant',
      'rc',
      '--image-size',
      '256',
      '--categories',
      '23',
      '--json',
    );
    expect(JSON.parse(rc.stdout).params).toEqual({ total: 4_845_952, trainable: 4_840_448, nonTrainable: 5_504 });
    const table = await tricaps('model', 'summary');
    expect(table.stdout).toMatch(/total 2,425,536 parameters: 2,425,024 trainable, 512 BatchNorm buffers/);
  });

  it.each([
    [['model', 'summary', '--bogus'], /unknown option '--bogus'/],
    [['model', 'summary', '--variant', 'xx'], /"xx" is not one of sc, rc/],
    [['model', 'summary', '--image-size', 'big'], /"big" is not an integer/],
    [
      ['model', 'summary', '--image-size', '100'],
      /imageSize: image size 100 is not a multiple of 16 \(four stride-2 stages\); try 96/,
    ],
    [
      ['train', '--workers', '2', '--shards', '9', '--steps', '1'],
      /a batch of 16 items cannot be split into 9 mining shards of at least 2 items; use fewer --shards/,
    ],
    [['coordinator', '--listen', 'nowhere'], /--listen nowhere: expected HOST:PORT, e.g. 0.0.0.0:7070/],
    [['coordinator', '--min-workers', '3', '--max-workers', '2'], /--max-workers 2 is below --min-workers 3/],
    [
      ['coordinator', '--heartbeat-interval', '2000', '--heartbeat-timeout', '1000'],
      /heartbeat timeout \(1000 ms\) must be longer than the interval \(2000 ms\)/,
    ],
    [['coordinator', '--run-id', 'bad id!'], /runId: letters, digits/],
    [['worker'], /required option '--coordinator <host:port>' not specified/],
    [
      ['report', '--run', '/nonexistent-tricaps', '--out', '/tmp/x.html'],
      /\/nonexistent-tricaps\/history.jsonl: no run history here; train with --checkpoint-dir/,
    ],
    [['train', '--resume'], /--resume and --checkpoint-every need --checkpoint-dir DIR/],
    [
      ['train', '--nats', 'nats://x:4222', '--min-workers', '2'],
      /--min-workers, --nats: fleet options; train with --workers 1 or more to use them/,
    ],
    [['coordinator', '--resume', '--steps', '1'], /--resume and --checkpoint-every need --checkpoint-dir DIR/],
    [
      ['train', '--engine', 'tensorflow', '--steps', '0'],
      /tensorflow: neither @tensorflow\/tfjs-node-gpu nor @tensorflow\/tfjs-node is installed \(install one with `npm install @tensorflow\/tfjs-node-gpu@4.22.0`/,
    ],
    [
      ['train', '--batch-triplets', '5', '--images-per-item', '4'],
      /15 images, not a whole number of items with 4 images each/,
    ],
    [['train', '--items', '8', '--steps', '1'], /4 train items; a batch of 16 triplets needs 16/],
    [['bench', 'engine', '--steps', '0'], /0 is outside 1..10000/],
    [['nonsense'], /unknown command 'nonsense'/],
    [['health-check', '--address', '127.0.0.1:1', '--timeout', 'soon'], /"soon" is not an integer/],
    [['data', 'inspect', '--root', '/nonexistent-tricaps'], /\/nonexistent-tricaps: no such directory/],
    [['train', '--data', '/nonexistent-tricaps'], /\/nonexistent-tricaps: no such directory/],
    [['data', 'synth'], /required option '--out <dir>' not specified/],
    [['train', '--aug-brightness', '2,1'], /"2,1" is not a range "lo,hi" with 0 <= lo <= hi/],
    [['train', '--eval-mask', 'predicted', 'psychic'], /"psychic" is not one of predicted, oracle, none/],
    [['bench', 'profile', '--engine', 'tpu'], /"tpu" is not one of auto, tensorflow, webgpu, wasm, cpu/],
    [
      [
        'train',
        '--steps',
        '1',
        '--items',
        '24',
        '--batch-triplets',
        '4',
        '--image-size',
        '16',
        '--checkpoint-dir',
        'package.json',
      ],
      /--checkpoint-dir package.json is a file, not a directory/,
    ],
    [
      ['bench', 'engine', '--engine', 'cpu', '--width', '0.1'],
      /51 channels \(512 x --width\) are not divisible by the capsule dim 16/,
    ],
    [
      ['train', '--worker-engines', 'webgpu,wasm', '--steps', '1'],
      /--worker-engines: fleet options; train with --workers 1 or more/,
    ],
    [
      ['train', '--workers', '2', '--worker-engines', 'webgpu,gpu'],
      /"gpu" is not one of auto, tensorflow, webgpu, wasm, cpu/,
    ],
    [['bench', 'project', '--scale', 'package.json'], /--scale package.json: not the JSON of tricaps bench scale/],
    [['bench', 'scale', '--link', 'fast'], /--link fast: expected a rate like 10gbit/],
    [['bench', 'chaos', '--kinds', 'worker-kill,meteor'], /"meteor" is not a fault kind \(worker-kill, /],
    [['bench', 'chaos', '--faults', '2'], /--faults 2 cannot cover the 6 kinds .*use at least 6/],
    [
      ['bench', 'chaos', '--seed', '3', '--steps', '9'],
      /--steps 9 is too short for schedule 3 \(7 faults need \d+ steps\)/,
    ],
  ])('%j fails with a clear message and exit code 2', async (args, message) => {
    const r = await tricaps(...args);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
    expect(r.stderr).not.toMatch(/^\s+at .*\.(js|ts):\d+/m); // no JavaScript stack trace for user mistakes
    // One line says what was wrong (structured log lines before it are the run's, not the error's).
    expect(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith('{')),
    ).toHaveLength(1);
  });

  it('--engine webgpu either runs on a GPU adapter or says why it cannot', async () => {
    const r = await tricaps(
      'train',
      '--engine',
      'webgpu',
      '--steps',
      '0',
      '--items',
      '32',
      '--batch-triplets',
      '4',
      '--image-size',
      '16',
      '--json',
    );
    if (r.code === 0) expect(lastJsonLine(r.stdout).engine).toBe('webgpu');
    else {
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/engine "webgpu" is not available here: webgpu: .*Use --engine wasm/);
    }
  });

  it.each([
    ['model summary', '--variant'],
    ['train', '--variant'],
    ['bench engine', '--variant'],
    ['data synth', '--out'],
    ['data inspect', '--root'],
    ['eval', '--checkpoint'],
    ['search', '--query'],
    ['coordinator', '--min-workers'],
    ['worker', '--coordinator'],
    ['report', '--run'],
  ])('%s --help documents its flags', async (cmd, flag) => {
    const r = await tricaps(...cmd.split(' '), '--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: tricaps/);
    expect(r.stdout).toContain(flag);
  });

  it('train runs end to end and reports Recall@K before and after as JSON', async () => {
    const r = await tricapsWithLogLevel(
      'info',
      'train',
      '--engine',
      'wasm',
      '--steps',
      '3',
      '--items',
      '24',
      '--batch-triplets',
      '4',
      '--image-size',
      '32',
      '--log-every',
      '1',
      '--json',
    );
    expect(r.code, r.stderr).toBe(0);
    const stepLines = r.stderr.split('\n').filter((l) => l.includes('"msg":"step '));
    expect(stepLines.map((l) => JSON.parse(l).step)).toEqual([0, 1, 2]);
    expect(JSON.parse(stepLines[0])).toHaveProperty('data_wait_ms');
    const out = lastJsonLine(r.stdout);
    expect(out.steps).toBe(3);
    expect(out.before.map((e: { mask: string }) => e.mask)).toEqual(['predicted', 'oracle']);
    expect(Object.keys(out.after[0].recall)).toEqual(['1', '10', '20', '30', '40', '50']);
    expect(out.after[0].queries).toBeGreaterThan(0);
  });

  it('data synth writes an In-shop catalogue that data inspect validates and train reads', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-cli-'));
    try {
      const root = join(dir, 'cat');
      const synth = await tricaps(
        'data',
        'synth',
        '--out',
        root,
        '--items',
        '24',
        '--categories',
        '3',
        '--image-size',
        '32',
        '--seed',
        '3',
      );
      expect(synth.code, synth.stderr).toBe(0);
      expect(synth.stdout).toMatch(/wrote 96 images of 24 items/);
      const again = await tricaps('data', 'synth', '--out', root, '--items', '24');
      expect(again.code).toBe(2);
      expect(again.stderr).toMatch(/is not empty; choose a new directory or pass --force/);
      const inspect = await tricaps('data', 'inspect', '--root', root, '--json', '--verify-images');
      expect(inspect.code, inspect.stderr).toBe(0);
      expect(JSON.parse(inspect.stdout)).toMatchObject({
        images: 96,
        items: 24,
        splits: { train: { images: 48, items: 12 } },
        bounding_boxes: true,
        skipped: 0,
      });
      const ck = join(dir, 'ck');
      const train = await tricaps(
        'train',
        '--data',
        root,
        '--engine',
        'wasm',
        '--steps',
        '2',
        '--batch-triplets',
        '4',
        '--image-size',
        '32',
        '--checkpoint-dir',
        ck,
        '--json',
      );
      expect(train.code, train.stderr).toBe(0);
      const trained = lastJsonLine(train.stdout);
      expect(trained.after[0].gallery).toBe(24);

      // eval with the saved weights reproduces the training run's final evaluation.
      const evaluation = await tricaps('eval', '--checkpoint', ck, '--data', root, '--engine', 'wasm', '--json');
      expect(evaluation.code, evaluation.stderr).toBe(0);
      const e = lastJsonLine(evaluation.stdout);
      expect(e.step).toBe(2);
      expect(e.recall).toEqual(trained.after[0].recall);
      expect(e.mapAtR).toBeCloseTo(trained.after[0].mapAtR, 6);

      // search ranks the gallery; a query from the catalogue gets its matches marked; --grid writes a PNG.
      const partition = readFileSync(join(root, 'Eval/list_eval_partition.txt'), 'utf8').split('\n');
      const query = partition
        .find((l) => l.trim().endsWith('query'))!
        .trim()
        .split(/\s+/)[0];
      const grid = join(dir, 'grid.png');
      const search = await tricaps(
        'search',
        '--checkpoint',
        ck,
        '--data',
        root,
        '--query',
        join(root, query),
        '-k',
        '24',
        '--grid',
        grid,
        '--engine',
        'wasm',
        '--json',
      );
      expect(search.code, search.stderr).toBe(0);
      const s = lastJsonLine(search.stdout);
      expect(s.results).toHaveLength(24);
      expect(s.results.filter((r: { match: boolean }) => r.match)).toHaveLength(2); // every gallery image of the item within k = gallery size
      expect(s.results.map((r: { distance: number }) => r.distance)).toEqual(
        [...s.results.map((r: { distance: number }) => r.distance)].sort((a, b) => a - b),
      );
      expect(readFileSync(grid).subarray(1, 4).toString()).toBe('PNG');

      const bad = await tricaps('search', '--checkpoint', ck, '--data', root, '--query', join(dir, 'nope.jpg'));
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/nope.jpg: cannot read the query image/);
      const good = readFileSync(join(ck, 'step-00000002', 'weights.bin'));
      writeFileSync(join(ck, 'step-00000002', 'weights.bin'), 'short');
      const corrupt = await tricaps('eval', '--checkpoint', ck, '--data', root);
      expect(corrupt.code).toBe(2);
      expect(corrupt.stderr).toMatch(
        /weights.bin: 5 bytes, the manifest needs \d+; the checkpoint is truncated or corrupt/,
      );
      const other = join(dir, 'other');
      expect(
        (await tricaps('data', 'synth', '--out', other, '--items', '8', '--categories', '2', '--image-size', '16'))
          .code,
      ).toBe(0);
      writeFileSync(join(ck, 'step-00000002', 'weights.bin'), good);
      const mismatch = await tricaps('eval', '--checkpoint', ck, '--data', other);
      expect(mismatch.code).toBe(2);
      expect(mismatch.stderr).toMatch(/was trained on 3 categories, .* has 2/);
      const empty = await tricaps('eval', '--checkpoint', root, '--data', root);
      expect(empty.code).toBe(2);
      expect(empty.stderr).toMatch(/holds no checkpoint/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('train --epochs (no --steps) shows the steps the epochs come to in its progress bar', async () => {
    const r = await tricaps(
      'train',
      '--engine',
      'wasm',
      '--epochs',
      '1',
      '--items',
      '24',
      '--batch-triplets',
      '4',
      '--image-size',
      '32',
      '--width',
      '0.25',
      '--no-augment',
      '--eval-mask',
      'oracle',
    );
    expect(r.code, r.stderr).toBe(0);
    const steps = Number(/Trained (\d+) steps/.exec(r.stdout)![1]);
    expect(steps).toBeGreaterThan(0);
    const totals = new Set([...r.stderr.matchAll(/step \d+\/(\d+)/g)].map((m) => Number(m[1])));
    expect([...totals]).toEqual([steps]);
  });

  it('train --workers 0 --resume continues from a checkpoint and ends with the weights of an uninterrupted run', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-local-resume-'));
    try {
      const args = [
        'train',
        '--engine',
        'wasm',
        '--items',
        '24',
        '--batch-triplets',
        '4',
        '--image-size',
        '32',
        '--width',
        '0.25',
        '--no-augment',
        '--eval-mask',
        'oracle',
        '--checkpoint-every',
        '2',
      ];
      expect((await tricaps(...args, '--steps', '4', '--checkpoint-dir', join(dir, 'a'))).code).toBe(0);
      expect((await tricaps(...args, '--steps', '2', '--checkpoint-dir', join(dir, 'b'))).code).toBe(0);
      const resumed = await tricapsWithLogLevel(
        'info',
        ...args,
        '--steps',
        '4',
        '--checkpoint-dir',
        join(dir, 'b'),
        '--resume',
      );
      expect(resumed.code).toBe(0);
      expect(resumed.stderr).toMatch(/resuming from .*step-00000002 at step 2/);
      const weights = (d: string) => readFileSync(join(dir, d, 'step-00000004', 'weights.bin'));
      expect(weights('b').equals(weights('a'))).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('bench engine prints one JSON line with timings and a tensor count that does not grow', async () => {
    const r = await tricaps(
      'bench',
      'engine',
      '--engine',
      'wasm',
      '--image-size',
      '32',
      '--batch-triplets',
      '4',
      '--steps',
      '3',
    );
    expect(r.code, r.stderr).toBe(0);
    const out = lastJsonLine(r.stdout);
    expect(out).toMatchObject({
      bench: 'engine',
      engine: 'wasm',
      variant: 'sc',
      image_size: 32,
      images_per_step: 12,
      steps: 3,
      tensor_growth: 0,
    });
    expect(out.ms_per_step.min).toBeGreaterThan(0);
    expect(out.images_per_s).toBeGreaterThan(0);
  });

  it('bench exchange reports each configuration through the real coordinator, and the loopback TCP and HTTP/2 ceilings', async () => {
    const r = await tricaps(
      'bench',
      'exchange',
      '--workers',
      '1,2',
      '--params',
      '300000',
      '--steps',
      '2',
      '--wire',
      'fp16',
    );
    expect(r.code, r.stderr).toBe(0);
    const out = lastJsonLine(r.stdout);
    expect(out).toMatchObject({ bench: 'exchange', wire: 'float16', steps: 2 });
    expect(out.rows.map((row: { workers: number }) => row.workers)).toEqual([1, 2]);
    for (const row of out.rows) {
      expect(row).toMatchObject({ params: '300000', parameter_count: 300_000, wire: 'float16' });
      expect(row.gradient_bytes_per_step).toBe(row.workers * 300_000 * 2); // float16 up
      expect(row.weight_bytes_per_step).toBe(row.workers * 300_000 * 4); // float32 down
      expect(row.ms_per_step_median).toBeGreaterThan(0);
      expect(row.total_share_of_loopback_tcp).toBeCloseTo(row.total_gb_per_s / out.loopback_tcp.gb_per_s, 9);
      expect(row.total_share_of_loopback_http2).toBeCloseTo(row.total_gb_per_s / out.loopback_http2.gb_per_s, 9);
    }
    for (const ceiling of [out.loopback_tcp, out.loopback_http2]) {
      expect(ceiling).toMatchObject({ bytes_per_round: 10_000_000, rounds: 20 });
      expect(ceiling.gb_per_s).toBeGreaterThan(0);
    }
  });

  it('bench profile lists kernels of one step, largest first', async () => {
    const r = await tricaps(
      'bench',
      'profile',
      '--engine',
      'wasm',
      '--image-size',
      '32',
      '--batch-triplets',
      '4',
      '--top',
      '5',
    );
    expect(r.code, r.stderr).toBe(0);
    const out = lastJsonLine(r.stdout);
    expect(out).toMatchObject({ bench: 'profile', engine: 'wasm' });
    expect(out.top).toHaveLength(5);
    // Which kernel comes first is timing (a GC pause can put a tiny Add on top): assert the
    // structure, not the ranking.
    for (const t of out.top)
      expect(t).toMatchObject({ kernel: expect.stringMatching(/^\w+ \[/), calls: expect.any(Number) });
    const ms = out.top.map((t: { ms: number }) => t.ms);
    expect(ms).toEqual([...ms].sort((a: number, b: number) => b - a));
    // The step's convolutions were profiled (forward and the gradients written for wasm).
    expect(Object.keys(out.by_op)).toContain('Conv2D');
    expect(out.kernels).toBeGreaterThan(out.top.length);
    expect(out.total_kernel_ms).toBeGreaterThan(0);
  });
});

// The webgpu engine as a user runs it (lavapipe on our machines; see test/unit/webgpu-engine.test.ts).
const webgpuSkip = await (await import('./helpers.js')).webgpuSkipReason();
describe.skipIf(webgpuSkip !== null)(
  `tricaps CLI on the webgpu engine${webgpuSkip ? ` (skipped: ${webgpuSkip})` : ''}`,
  () => {
    it('bench engine --engine webgpu completes its steps and prints its JSON line', async () => {
      const r = await tricaps(
        'bench',
        'engine',
        '--engine',
        'webgpu',
        '--variant',
        'sc',
        '--image-size',
        '32',
        '--batch-triplets',
        '2',
        '--steps',
        '2',
      );
      expect(r.code, r.stderr).toBe(0);
      const out = lastJsonLine(r.stdout);
      expect(out).toMatchObject({
        bench: 'engine',
        engine: 'webgpu',
        backend: 'webgpu',
        images_per_step: 6,
        steps: 2,
        tensor_growth: 0,
      });
      expect(out.ms_per_step.median).toBeGreaterThan(0);
      expect(out.peak_device_bytes).toBeGreaterThan(0);
    });

    it('bench profile --engine webgpu counts reads, dispatches, uploads and buffers per step', async () => {
      const r = await tricaps(
        'bench',
        'profile',
        '--engine',
        'webgpu',
        '--image-size',
        '32',
        '--batch-triplets',
        '2',
        '--top',
        '5',
      );
      expect(r.code, r.stderr).toBe(0);
      const out = lastJsonLine(r.stdout);
      expect(out).toMatchObject({ bench: 'profile', engine: 'webgpu', images_per_step: 6 });
      for (const path of ['worker', 'local'] as const) {
        const c = out.per_step[path];
        expect(c.reads_sync, path).toBe(0);
        expect(c.reads_awaited, path).toBe(1);
        expect(c.dispatches, path).toBeGreaterThan(100);
        // At least the step's pixels (6 images of 32x32x3 float32) went up.
        expect(c.uploaded_bytes, path).toBeGreaterThanOrEqual(6 * 32 * 32 * 3 * 4);
        expect(c.peak_buffer_bytes, path).toBeGreaterThan(0);
      }
      expect(out.top).toHaveLength(5);
      expect(Object.values(out.by_op).every((o) => (o as { calls: number }).calls > 0)).toBe(true);
    });
  },
);

describe('tricaps train in one process (the fleet loop with an in-process worker)', () => {
  it('resumes exactly: 2 steps, then resumed to 4, ends with the weights of 4 steps in one go', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tricaps-local-resume-'));
    try {
      const common = [
        'train',
        '--engine',
        'wasm',
        '--items',
        '24',
        '--batch-triplets',
        '4',
        '--image-size',
        '32',
        '--json',
      ];
      const straight = await tricaps(...common, '--steps', '4', '--checkpoint-dir', join(dir, 'a'));
      expect(straight.code, straight.stderr).toBe(0);
      const half = await tricaps(...common, '--steps', '2', '--checkpoint-dir', join(dir, 'b'));
      expect(half.code, half.stderr).toBe(0);
      const resumed = await tricaps(...common, '--steps', '4', '--checkpoint-dir', join(dir, 'b'), '--resume');
      expect(resumed.code, resumed.stderr).toBe(0);
      expect(lastJsonLine(resumed.stdout).steps).toBe(4);
      const weights = (root: string) => readFileSync(join(root, 'step-00000004', 'weights.bin'));
      expect(weights(join(dir, 'b')).equals(weights(join(dir, 'a')))).toBe(true);
      // The run history beside the checkpoints has every step once, across the resume.
      const history = readFileSync(join(dir, 'b', 'history.jsonl'), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      expect(history.filter((h) => h.type === 'step').map((h) => h.step)).toEqual([0, 1, 2, 3]);
      // The evaluations train runs before and after are in it too, every mask (for `tricaps report`).
      expect(history.filter((h) => h.type === 'evaluation').map((h) => `${h.step} ${h.mask}`)).toEqual(
        ['0', '2', '2', '4'].flatMap((st) => [`${st} predicted`, `${st} oracle`]),
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('start-up failures say one thing', () => {
  it('a coordinator whose --listen port is taken says so in one line, exit 2, and never claims a run', async () => {
    const { createServer } = await import('node:net');
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    try {
      const r = await tricapsWithLogLevel(
        'info',
        'coordinator',
        '--listen',
        `127.0.0.1:${port}`,
        '--steps',
        '2',
        '--items',
        '24',
        '--batch-triplets',
        '4',
        '--image-size',
        '16',
        '--engine',
        'wasm',
      );
      expect(r.code, r.stderr).toBe(2);
      const prose = r.stderr
        .trim()
        .split('\n')
        .filter((l) => !l.startsWith('{'));
      expect(prose).toEqual([
        `tricaps: error: cannot listen on 127.0.0.1:${port}: the port is in use (another coordinator or process has it); choose another port`,
      ]);
      expect(r.stderr).not.toMatch(/complete after|telling the workers/);
    } finally {
      blocker.close();
    }
  });
});
