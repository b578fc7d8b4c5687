// `tricaps bench profile`: what one training step asks of the device, as JSON. Two parts:
//   - counts that do not depend on the hardware (measured on lavapipe they hold on any GPU): reads
//     back to the host (awaited and synchronous), kernel dispatches, bytes uploaded, peak device
//     buffer bytes; for the fleet worker's step (gradients read once) and the local loop's step
//     (statistics read, Adam on the device);
//   - per-kernel time (tf.profile), by op with call counts and the largest kernels by shape. Kernel
//     times include profiling overhead: use them to rank, and `bench engine` to time.
import * as tf from '@tensorflow/tfjs-core';
import { ParameterUpdater } from '../coordinator/optimizer.js';
import { OptimizerConfigSchema } from '../shared/optimizer-config.js';
import { DeviceCounters, type DeviceCounts } from '../shared/engine/device-counters.js';
import { initEngine, type EngineChoice } from '../shared/engine/engine.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { modelConfig, type ModelConfigInput } from '../shared/model/config.js';
import { createModelState } from '../shared/model/params.js';
import { computeGradients } from '../shared/train/gradients.js';

const snake = (c: DeviceCounts) => ({
  reads_awaited: c.asyncReads,
  reads_sync: c.syncReads,
  dispatches: c.dispatches,
  uploaded_bytes: c.uploadedBytes,
  peak_buffer_bytes: c.peakBufferBytes,
});

export async function profileStep(
  engineChoice: EngineChoice,
  model: ModelConfigInput,
  batchTriplets: number,
  top = 25,
) {
  const engine = await initEngine(engineChoice);
  const arch = buildArchitecture(modelConfig(model));
  const state = createModelState(arch, 1);
  const updater = new ParameterUpdater(state, OptimizerConfigSchema.parse({}));
  const n = 3 * batchTriplets;
  const size = arch.config.imageSize;
  const itemIds = Array.from({ length: n }, (_, i) => Math.floor(i / 3));
  const categories = itemIds.map((i) => i % arch.config.categories);
  // Pixels arrive from the host every step, as in training (their upload is counted).
  const pixels = Float32Array.from({ length: n * size * size * 3 }, (_, i) => (Math.sin(i * 12.9898) + 1) / 2);
  const options = { mining: 'batch-hard' as const, margin: 2, marginLossWeight: 0, conv: engine.conv, seed: 1 };
  const workerStep = async () => {
    const images = tf.tensor4d(pixels, [n, size, size, 3]);
    const r = computeGradients(state, { images, itemIds, categories }, options);
    await r.readAll();
    r.dispose();
    images.dispose();
  };
  const localStep = async () => {
    const images = tf.tensor4d(pixels, [n, size, size, 3]);
    const r = computeGradients(state, { images, itemIds, categories }, options);
    await r.readStats();
    updater.apply(r.grads, r.bnUpdates, 0);
    r.dispose();
    images.dispose();
  };
  // Warm-up: pipelines compile, Adam creates its slots, buffer pools fill.
  await workerStep();
  await localStep();
  const counters = DeviceCounters.install();
  const counted = async (f: () => Promise<void>) => {
    counters.reset();
    await f();
    return snake(counters.snapshot());
  };
  const worker = await counted(workerStep);
  const local = await counted(localStep);
  counters.uninstall();

  const info = await tf.profile(workerStep);
  // "unnamed scope" entries are custom-gradient wrappers whose inner kernels are listed too.
  const kernels = info.kernels.filter((k) => k.name !== 'unnamed scope');
  const byKernel = new Map<string, { ms: number; calls: number }>();
  const byOp = new Map<string, { ms: number; calls: number }>();
  for (const k of kernels) {
    const ms = Number(k.kernelTimeMs) || 0;
    for (const [map, key] of [
      [byKernel, `${k.name} ${JSON.stringify(k.inputShapes)}`],
      [byOp, k.name],
    ] as const) {
      const e = map.get(key) ?? { ms: 0, calls: 0 };
      e.ms += ms;
      e.calls++;
      map.set(key, e);
    }
  }
  updater.dispose();
  state.dispose();
  const round = (ms: number) => Math.round(ms * 100) / 100;
  return {
    bench: 'profile',
    engine: engine.name,
    device: engine.device,
    variant: arch.config.variant,
    image_size: size,
    images_per_step: n,
    per_step: { worker: worker, local },
    kernels: kernels.length,
    total_kernel_ms: round([...byOp.values()].reduce((a, b) => a + b.ms, 0)),
    by_op: Object.fromEntries(
      [...byOp].sort((a, b) => b[1].ms - a[1].ms).map(([k, v]) => [k, { ms: round(v.ms), calls: v.calls }]),
    ),
    top: [...byKernel]
      .sort((a, b) => b[1].ms - a[1].ms)
      .slice(0, top)
      .map(([k, v]) => ({ kernel: k, ms: round(v.ms), calls: v.calls })),
  };
}
