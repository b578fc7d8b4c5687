// The webgpu engine in real processes: a local fleet of one webgpu worker and one wasm worker, and a
// checkpoint trained on webgpu evaluated on both engines. Runs on lavapipe on our machines (make
// test installs it); skips elsewhere with the reason.
import { lastJsonLine as lastJson, tricaps } from './cli-runner.js';
import { afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Fleet, FleetProcess, TempDirs, TINY } from './fleet-harness.js';
import { webgpuSkipReason } from './helpers.js';

const skip = await webgpuSkipReason();
const fleet = new Fleet();
const temp = new TempDirs('tricaps-webgpu-');
afterEach(async () => {
  await fleet.cleanup();
  temp.cleanup();
});
const tempDir = () => temp.make();

describe.skipIf(skip !== null)(`webgpu in real processes${skip ? ` (skipped: ${skip})` : ''}`, () => {
  it('a fleet of one webgpu and one wasm worker trains: loss falls, every step applied once with both shards', async () => {
    const steps = 30;
    const p = fleet.track(
      new FleetProcess(
        [
          'train',
          '--workers',
          '2',
          '--worker-engines',
          'webgpu,wasm',
          ...TINY,
          '--steps',
          String(steps),
          '--margin-loss-weight',
          '0.5',
          '--lr',
          '0.003',
          '--eval-mask',
          'oracle',
          '--log-every',
          '1',
          '--json',
        ],
        { TRICAPS_LOG_LEVEL: 'info' },
      ),
    );
    const { code } = await p.exited;
    expect(code, p.raw.slice(-15).join('\n')).toBe(0);
    // Both engines joined: the coordinator names each worker's engine and device.
    const joined = p.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('joined'));
    expect(joined.map((l) => l.engine).sort()).toEqual(['wasm', 'webgpu']);
    const lines = p.lines.filter(
      (l) => l.name === 'train' && typeof l.msg === 'string' && /^step \d+ loss/.test(l.msg),
    );
    expect(lines.map((l) => l.step)).toEqual(Array.from({ length: steps }, (_, i) => i));
    // --batch-triplets 8, random mining: 24 images, one triplet per anchor, over 2 shards on 2 workers.
    for (const l of lines)
      expect({ step: l.step, workers: l.workers, triplets: l.triplets }).toEqual({
        step: l.step,
        workers: 2,
        triplets: 24,
      });
    const out = lastJson(p.stdout.join(''));
    expect(out).toMatchObject({ workers: 2, steps, lost: [] });
    expect(out.loss_last10).toBeLessThan(out.loss_first10 - 0.1);
  });

  it('a checkpoint trained on webgpu evaluates on wasm with the same Recall@K', async () => {
    const root = join(tempDir(), 'shop');
    const ck = join(tempDir(), 'ck');
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
      '3',
    );
    expect(synth.code, synth.stderr).toBe(0);
    const model = [
      '--variant',
      'sc',
      '--image-size',
      '32',
      '--width',
      '0.25',
      '--batch-triplets',
      '8',
      '--routing-pool',
      'mean',
      '--bn-momentum',
      '0.9',
      '--no-augment',
      '--mining',
      'semi-hard',
    ];
    const train = await tricaps(
      'train',
      '--data',
      root,
      '--engine',
      'webgpu',
      ...model,
      '--steps',
      '12',
      '--checkpoint-dir',
      ck,
      '--eval-mask',
      'oracle',
      '--json',
    );
    expect(train.code, train.stderr).toBe(0);
    expect(lastJson(train.stdout).engine).toBe('webgpu');
    const evaluate = async (engine: string) => {
      const r = await tricaps(
        'eval',
        '--checkpoint',
        ck,
        '--data',
        root,
        '--engine',
        engine,
        '--mask',
        'oracle',
        '--json',
      );
      expect(r.code, r.stderr).toBe(0);
      return lastJson(r.stdout);
    };
    const onGpu = await evaluate('webgpu');
    const onWasm = await evaluate('wasm');
    expect(onGpu.engine).toBe('webgpu');
    expect(onWasm.engine).toBe('wasm');
    expect(onWasm.queries).toBe(onGpu.queries);
    // Same weights, float32 on both: ranks agree except where two gallery distances are within
    // rounding of each other; on this catalogue (~50 queries) one swapped pair moves R@K by 1/queries.
    const tolerance = 1.01 / onGpu.queries;
    for (const k of Object.keys(onGpu.recall))
      expect(Math.abs(onWasm.recall[k] - onGpu.recall[k]), `R@${k}`).toBeLessThanOrEqual(tolerance);
    expect(Math.abs(onWasm.mapAtR - onGpu.mapAtR)).toBeLessThanOrEqual(tolerance);
  });
});
