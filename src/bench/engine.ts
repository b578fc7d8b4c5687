// `tricaps bench engine`: times full training steps (forward, mining, loss, backward, Adam) on one
// engine with synthetic pixels, and prints one JSON line. A benchmark reports numbers; it asserts
// nothing.
import { median } from '../shared/stats.js';
import * as tf from '@tensorflow/tfjs-core';
import { initEngine, type EngineChoice } from '../shared/engine/engine.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture, forwardMacsPerImage } from '../shared/model/architecture.js';
import { modelConfig, type ModelConfigInput } from '../shared/model/config.js';
import { createModelState } from '../shared/model/params.js';
import { forward } from '../shared/model/tricapsnet.js';
import type { MiningStrategy } from '../shared/model/mining.js';
import { Rng } from '../shared/rng.js';
import { computeGradients } from '../shared/train/gradients.js';
import { ParameterUpdater } from '../coordinator/optimizer.js';
import { OptimizerConfigSchema } from '../shared/optimizer-config.js';

export interface EngineBenchOptions {
  engine: EngineChoice;
  model: ModelConfigInput;
  batchTriplets: number;
  imagesPerItem: number;
  steps: number;
  warmup: number;
  mining: MiningStrategy;
  seed: number;
}

export async function benchEngine(o: EngineBenchOptions, log: Logger): Promise<Record<string, unknown>> {
  const engine = await initEngine(o.engine, log);
  const arch = buildArchitecture(modelConfig(o.model));
  const model = createModelState(arch, o.seed);
  const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({}));
  const n = 3 * o.batchTriplets;
  if (n % o.imagesPerItem !== 0)
    throw new Error(`${n} images per step are not a whole number of items of ${o.imagesPerItem}`);
  const size = arch.config.imageSize;
  const rng = new Rng(o.seed);
  const pixels = Float32Array.from({ length: n * size * size * 3 }, () => rng.next());
  const images = tf.tensor4d(pixels, [n, size, size, 3]);
  const itemIds = Array.from({ length: n }, (_, i) => Math.floor(i / o.imagesPerItem));
  const categories = itemIds.map((id) => id % arch.config.categories);

  // Peak device memory: tfjs reports bytes held on the GPU for GPU backends, host bytes otherwise.
  let peakBytes = 0;
  const notePeak = () => {
    const m = tf.memory() as tf.MemoryInfo & { numBytesInGPUAllocated?: number; numBytesInGPU?: number };
    peakBytes = Math.max(peakBytes, m.numBytesInGPUAllocated ?? m.numBytesInGPU ?? m.numBytes);
  };
  // The first parameter is small (the stem's kernel); reading it waits for the optimizer's update.
  const fence = model.trainable.values().next().value!;
  const step = async (i: number) => {
    const t0 = performance.now();
    const result = computeGradients(
      model,
      { images, itemIds, categories },
      { mining: o.mining, margin: 2, marginLossWeight: 0, conv: engine.conv, seed: i },
    );
    notePeak();
    // As the local training loop: the statistics (loss checked finite there) before the update.
    await result.readStats();
    updater.apply(result.grads, result.bnUpdates, 0);
    result.dispose();
    // An awaited read fences asynchronous engines (webgpu) so the time covers the whole step.
    await fence.data();
    return performance.now() - t0;
  };
  for (let i = 0; i < o.warmup; i++) await step(-1 - i);
  const tensorsBefore = tf.memory().numTensors;
  const times: number[] = [];
  for (let i = 0; i < o.steps; i++) times.push(await step(i));
  const tensorsAfter = tf.memory().numTensors;

  const forwardTimes: number[] = [];
  for (let i = 0; i < Math.min(3, o.steps); i++) {
    const t0 = performance.now();
    const { capsules } = forward(model, images, { training: false, conv: engine.conv });
    await capsules.data();
    capsules.dispose();
    forwardTimes.push(performance.now() - t0);
  }
  const med = median(times);
  // Training ~ 3x forward multiply-accumulates (forward, input gradient, filter gradient); 2 FLOP/MAC.
  const gflopPerStep = (3 * 2 * forwardMacsPerImage(arch) * n) / 1e9;
  images.dispose();
  updater.dispose();
  model.dispose();
  return {
    bench: 'engine',
    engine: engine.name,
    device: engine.device,
    backend: engine.backend,
    variant: arch.config.variant,
    image_size: size,
    batch_triplets: o.batchTriplets,
    images_per_step: n,
    steps: o.steps,
    warmup_steps: o.warmup,
    ms_per_step: { min: Math.min(...times), median: med, max: Math.max(...times) },
    forward_ms_median: forwardTimes.length ? median(forwardTimes) : null,
    images_per_s: (n * 1000) / med,
    gflop_per_step_estimate: gflopPerStep,
    gflops: gflopPerStep / (med / 1000),
    tensors_alive_before: tensorsBefore,
    tensors_alive_after: tensorsAfter,
    tensor_growth: tensorsAfter - tensorsBefore,
    peak_device_bytes: peakBytes,
  };
}
