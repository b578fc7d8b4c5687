// The GPU benchmark of the WebGPU engine (issue: GPU workers that are fast), as one program for the
// device machine (it has no Node.js: scripts/device-gpu-bench.sh bundles this file with esbuild via
// ../shared/tools/device-pack.sh). Prints one JSON line, and writes it to $OUT/gpu-bench.json when
// $OUT is set: SC and RC at 256px, 32 triplets: ms/step, images/s, peak GPU bytes, and the largest
// kernels of one step. Arguments: [engine] [imageSize] [batchTriplets] [steps].
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { benchEngine } from './engine.js';
import { profileStep } from './profile-step.js';
import { createLogger } from '../shared/log.js';
import type { EngineChoice } from '../shared/engine/engine.js';

const [engine = 'webgpu', imageSize = '256', batchTriplets = '32', steps = '5'] = process.argv.slice(2);

async function main(): Promise<void> {
  tf.env().set('PROD', true);
  const log = createLogger('gpu-bench');
  const results: Record<string, unknown>[] = [];
  for (const variant of ['sc', 'rc'] as const) {
    const model = { variant, imageSize: Number(imageSize), categories: 23 };
    try {
      const timing = await benchEngine(
        {
          engine: engine as EngineChoice,
          model,
          batchTriplets: Number(batchTriplets),
          imagesPerItem: 3,
          steps: Number(steps),
          warmup: 2,
          mining: 'batch-hard',
          seed: 1,
        },
        log,
      );
      const profile = await profileStep(engine as EngineChoice, model, Number(batchTriplets), 15);
      results.push({ variant, ...timing, profile });
    } catch (err) {
      results.push({ variant, error: (err as Error).message });
    }
  }
  const line = JSON.stringify({
    bench: 'gpu',
    engine,
    image_size: Number(imageSize),
    batch_triplets: Number(batchTriplets),
    reference_pytorch_images_per_s: { sc: 1319, rc: 1221 },
    results,
  });
  console.log(line);
  if (process.env.OUT) {
    mkdirSync(process.env.OUT, { recursive: true });
    writeFileSync(join(process.env.OUT, 'gpu-bench.json'), `${line}\n`);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
