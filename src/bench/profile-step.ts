// `tricaps bench profile`: per-kernel time of one training step (tf.profile), largest first, as JSON.
// Kernel times include profiling overhead; use them to rank, and `bench engine` to time.
import * as tf from '@tensorflow/tfjs-core';
import { initEngine, type EngineChoice } from '../shared/engine/engine.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { modelConfig, type ModelConfigInput } from '../shared/model/config.js';
import { createModelState } from '../shared/model/params.js';
import { computeGradients } from '../worker/trainer.js';

export async function profileStep(engineChoice: EngineChoice, model: ModelConfigInput, batchTriplets: number, top = 25) {
  const engine = await initEngine(engineChoice);
  const arch = buildArchitecture(modelConfig(model));
  const state = createModelState(arch, 1);
  const n = 3 * batchTriplets;
  const images = tf.randomUniform([n, arch.config.imageSize, arch.config.imageSize, 3]) as tf.Tensor4D;
  const itemIds = Array.from({ length: n }, (_, i) => Math.floor(i / 3));
  const categories = itemIds.map((i) => i % arch.config.categories);
  const run = () => computeGradients(state, { images, itemIds, categories }, { mining: 'batch-hard', margin: 2, marginLossWeight: 0, conv: engine.conv, seed: 1 });
  run().dispose();
  const info = await tf.profile(() => {
    const r = run();
    r.dispose();
  });
  // "unnamed scope" entries are custom-gradient wrappers whose inner kernels are listed too.
  const kernels = info.kernels.filter((k) => k.name !== 'unnamed scope');
  const byKernel = new Map<string, { ms: number; calls: number }>();
  for (const k of kernels) {
    const key = `${k.name} ${JSON.stringify(k.inputShapes)}`;
    const e = byKernel.get(key) ?? { ms: 0, calls: 0 };
    e.ms += Number(k.kernelTimeMs) || 0;
    e.calls++;
    byKernel.set(key, e);
  }
  const byName = new Map<string, number>();
  for (const k of kernels) byName.set(k.name, (byName.get(k.name) ?? 0) + (Number(k.kernelTimeMs) || 0));
  state.dispose();
  images.dispose();
  return {
    bench: 'profile',
    engine: engine.name,
    kernels: kernels.length,
    total_kernel_ms: [...byName.values()].reduce((a, b) => a + b, 0),
    by_op: Object.fromEntries([...byName].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [k, Math.round(v)])),
    top: [...byKernel].sort((a, b) => b[1].ms - a[1].ms).slice(0, top).map(([k, v]) => ({ kernel: k, ms: Math.round(v.ms), calls: v.calls })),
  };
}
