// The webgpu engine against the cpu backend (the reference), on whatever adapter Dawn finds: Mesa's
// lavapipe on our CPU machines (installed by `make test`), a real GPU elsewhere. Tiny SC and RC
// models: forward capsules, embeddings, loss, every parameter's gradient, BatchNorm statistics,
// on-device mining, the fast convolution gradients; and no synchronous read anywhere in a step.
// Tolerances: float32 with other summation orders (GPU reductions, matmul tiling): relative 1e-3
// of each tensor's own scale (gradients: 1e-4 of the largest gradient for tensors whose true value
// is ~0, like conv biases in front of BatchNorm); the convolution cases 1e-4 as on wasm.
import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { ParameterUpdater } from '../../src/coordinator/optimizer.js';
import { OptimizerConfigSchema } from '../../src/shared/optimizer-config.js';
import { DeviceCounters } from '../../src/shared/engine/device-counters.js';
import { fastGradConv, initEngine, softwareAdapterReason, stockConv } from '../../src/shared/engine/engine.js';
import { conv2dFastGrad } from '../../src/shared/engine/fast-conv.js';
import { batchNormTraining } from '../../src/shared/model/batch-norm.js';
import { embed } from '../../src/shared/model/embedding.js';
import { squash } from '../../src/shared/model/squash.js';
import { MINING_STRATEGIES, type MiningStrategy } from '../../src/shared/model/mining.js';
import { forward } from '../../src/shared/model/tricapsnet.js';
import { computeGradients } from '../../src/shared/train/gradients.js';
import { expectTensorsClose, relativeError, seededNormal, useBackend, webgpuSkipReason } from '../helpers.js';
import { tinyBatch, tinyModel } from '../tiny-model.js';
import { deviceResult, hostReference, randomBatch } from '../mining-fixtures.js';

const skip = await webgpuSkipReason();

/** Everything one tiny model computes on a backend, read to the host. */
async function runModel(backend: 'cpu' | 'webgpu', variant: 'sc' | 'rc', mining: MiningStrategy) {
  await useBackend(backend);
  const model = tinyModel({ variant, dropout: 0 });
  const batch = tinyBatch(4, 3);
  const conv = backend === 'webgpu' ? fastGradConv : stockConv;
  const inference = forward(model, batch.images, { training: false, conv });
  const capsules = Array.from(await inference.capsules.data());
  const embeddings = Object.fromEntries(
    await Promise.all(
      (['predicted', 'oracle', 'none'] as const).map(async (m) => {
        const e = embed(inference.capsules, m, batch.categories);
        const values = Array.from(await e.data());
        e.dispose();
        return [m, values] as const;
      }),
    ),
  );
  inference.capsules.dispose();
  const r = computeGradients(model, batch, { mining, margin: 2, marginLossWeight: 0.5, conv, seed: 4 });
  const host = await r.readAll();
  const grads = new Map([...host.grads].map(([k, v]) => [k, Array.from(v)]));
  const bn = new Map([...host.bnUpdates].map(([k, v]) => [k, Array.from(v)]));
  r.dispose();
  model.dispose();
  batch.images.dispose();
  return { capsules, embeddings, stats: host.stats, grads, bn };
}

function expectClose(actual: Map<string, number[]>, expected: Map<string, number[]>, what: string): void {
  expect([...actual.keys()]).toEqual([...expected.keys()]);
  expectTensorsClose(actual, expected, what, (diff, tolerance, name) => expect(diff, name).toBeLessThan(tolerance));
}

describe.skipIf(skip !== null)(`webgpu engine${skip ? ` (skipped: ${skip})` : ''}`, () => {
  beforeAll(async () => {
    await useBackend('webgpu');
  });

  it('a training step reads nothing synchronously: one awaited read per step, on both training paths', async () => {
    await useBackend('webgpu');
    const model = tinyModel({ variant: 'sc', dropout: 0.2 });
    const batch = tinyBatch(4, 3);
    const updater = new ParameterUpdater(model, OptimizerConfigSchema.parse({}));
    const counters = DeviceCounters.install();
    try {
      for (const mining of MINING_STRATEGIES) {
        // The fleet worker's step: gradients, BN statistics and statistics in one read.
        counters.reset();
        const worker = computeGradients(model, batch, {
          mining,
          margin: 2,
          marginLossWeight: 0.5,
          conv: fastGradConv,
          seed: 1,
        });
        const host = await worker.readAll();
        worker.dispose();
        expect(host.grads.size).toBe(model.trainable.size);
        expect(counters.snapshot(), `worker step, ${mining}`).toMatchObject({ syncReads: 0, asyncReads: 1 });
        expect(counters.snapshot().dispatches).toBeGreaterThan(50);
        // The local loop's step: statistics read (loss checked), then Adam on the device.
        counters.reset();
        const local = computeGradients(model, batch, {
          mining,
          margin: 2,
          marginLossWeight: 0.5,
          conv: fastGradConv,
          seed: 1,
        });
        const stats = await local.readStats();
        updater.apply(local.grads, local.bnUpdates, 0);
        local.dispose();
        expect(Number.isFinite(stats.loss)).toBe(true);
        expect(counters.snapshot(), `local step, ${mining}`).toMatchObject({ syncReads: 0, asyncReads: 1 });
      }
      // The counter sees a synchronous read when one happens (so the zeros above mean something).
      counters.reset();
      // Large enough to run on the GPU (tfjs-webgpu runs inputs under 1,000 values on the CPU).
      const t = tf.add(tf.ones([64, 64]), 1);
      expect(() => t.dataSync()).toThrow(); // tfjs-webgpu's readSync needs OffscreenCanvas: not in Node
      expect(counters.snapshot().syncReads).toBe(1);
      t.dispose();
    } finally {
      counters.uninstall();
      updater.dispose();
      model.dispose();
      batch.images.dispose();
    }
  });

  it.each(['sc', 'rc'] as const)(
    '%s: capsules, embeddings, loss, gradients and BN statistics match the cpu backend',
    async (variant) => {
      for (const mining of ['batch-hard', 'random'] as const) {
        const cpu = await runModel('cpu', variant, mining);
        const gpu = await runModel('webgpu', variant, mining);
        expect(relativeError(gpu.capsules, cpu.capsules), 'capsules').toBeLessThan(1e-3);
        for (const m of ['predicted', 'oracle', 'none'] as const)
          expect(relativeError(gpu.embeddings[m], cpu.embeddings[m]), `embeddings ${m}`).toBeLessThan(1e-3);
        expect(gpu.stats.triplets).toBe(cpu.stats.triplets);
        expect(gpu.stats.activeTriplets).toBe(cpu.stats.activeTriplets);
        expect(gpu.stats.loss).toBeCloseTo(cpu.stats.loss, 4);
        expect(gpu.stats.meanNegativeDistance).toBeCloseTo(cpu.stats.meanNegativeDistance, 4);
        expectClose(gpu.grads, cpu.grads, `${variant} ${mining} gradient`);
        expectClose(gpu.bn, cpu.bn, `${variant} BN statistic`);
      }
    },
  );

  it('the fused squash kernel and its gradient equal the plain ops on the cpu backend (zero, tiny and long capsules)', async () => {
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      expect(tf.getKernel('TricapsSquash', backend) !== undefined).toBe(backend === 'webgpu');
      const scales = tf.tensor([0, 1e-4, 0.05, 1, 30], [5, 1, 1]);
      const s = tf.mul(seededNormal([5, 7, 16], 5), scales); // a zero capsule row, tiny ones, long ones
      const probe = seededNormal([5, 7, 16], 6);
      const value = squash(s);
      const [grad] = tf.grads((x: tf.Tensor) => tf.sum(tf.mul(squash(x), probe)))([s]);
      const out = { value: Array.from(await value.data()), grad: Array.from(await grad.data()) };
      tf.dispose([scales, s, probe, value, grad]);
      return out;
    };
    const cpu = await run('cpu');
    const gpu = await run('webgpu');
    expect(relativeError(gpu.value, cpu.value)).toBeLessThan(1e-5);
    expect(relativeError(gpu.grad, cpu.grad)).toBeLessThan(1e-4);
    expect(gpu.grad.slice(0, 7 * 16).every((g) => g === 0)).toBe(true); // zero capsules: zero gradient
    // The fused path is what the model runs: one dispatch forward.
    await useBackend('webgpu');
    const counters = DeviceCounters.install();
    const x = tf.add(seededNormal([64, 16, 8], 7), 0);
    counters.reset();
    squash(x).dispose();
    expect(counters.snapshot().dispatches).toBe(1);
    counters.uninstall();
    x.dispose();
  });

  it('the fused BatchNorm kernels equal the plain ops on the cpu backend (values, statistics, gradients)', async () => {
    const run = async (backend: 'cpu' | 'webgpu') => {
      await useBackend(backend);
      const x = tf.add(tf.mul(seededNormal([3, 5, 4, 6], 1), 3), 1) as tf.Tensor4D;
      const gamma = seededNormal([6], 2);
      const beta = seededNormal([6], 3);
      const probe = seededNormal([3, 5, 4, 6], 4);
      const r = batchNormTraining(x, gamma, beta, 1e-3);
      const grads = tf.grads((xi: tf.Tensor, g: tf.Tensor, b: tf.Tensor) => {
        const t = batchNormTraining(xi as tf.Tensor4D, g, b, 1e-3);
        tf.dispose([t.mean, t.variance]);
        return tf.sum(tf.mul(t.y, probe));
      })([x, gamma, beta]);
      const read = async (t: tf.Tensor) => Array.from(await t.data());
      const out = {
        y: await read(r.y),
        mean: await read(r.mean),
        variance: await read(r.variance),
        grads: await Promise.all(grads.map(read)),
      };
      tf.dispose([x, gamma, beta, probe, r.y, r.mean, r.variance, ...grads]);
      return out;
    };
    const cpu = await run('cpu');
    const gpu = await run('webgpu');
    for (const k of ['y', 'mean', 'variance'] as const) expect(relativeError(gpu[k], cpu[k]), k).toBeLessThan(1e-5);
    for (let i = 0; i < 3; i++)
      expect(relativeError(gpu.grads[i], cpu.grads[i]), ['dx', 'dgamma', 'dbeta'][i]).toBeLessThan(1e-4);
    expect(tf.getKernel('TricapsBnApply', 'webgpu')).toBeDefined();
  });

  it('mines on the device as the host miner does (every strategy)', async () => {
    await useBackend('webgpu');
    for (let seed = 1; seed <= 4; seed++) {
      const { labels, distances } = randomBatch(seed, 4, 3);
      for (const strategy of MINING_STRATEGIES) {
        const host = await hostReference(strategy, labels, distances, 1, seed);
        const device = await deviceResult(strategy, labels, distances, 1, seed);
        expect(device.stats[0], `${strategy} ${seed}`).toBe(host.triplets);
        expect(device.loss, `${strategy} ${seed}`).toBeCloseTo(host.loss, 5);
      }
    }
  });

  // The same kernel / stride / padding / size cases as the wasm test (fast-conv.test.ts).
  const convCases: { kernel: number; stride: number; padding: 'same' | 'valid'; size: number }[] = [];
  for (const [kernel, stride] of [
    [7, 2],
    [3, 2],
    [3, 1],
    [1, 2],
    [7, 1],
  ]) {
    for (const size of [9, 12, 16]) {
      for (const padding of ['same', 'valid'] as const)
        if (padding === 'same' || size >= kernel) convCases.push({ kernel, stride, padding, size });
    }
  }
  it("fast convolution gradients match the cpu backend's stock gradients (every case of the wasm test)", async () => {
    const grads = async (backend: 'cpu' | 'webgpu', c: (typeof convCases)[number]) => {
      await useBackend(backend);
      const { dx, dw } = tf.tidy(() => {
        const x = seededNormal([2, c.size, c.size + 1, 3], 1) as tf.Tensor4D;
        const w = seededNormal([c.kernel, c.kernel, 3, 5], 2) as tf.Tensor4D;
        const probe = seededNormal(tf.conv2d(x, w, c.stride, c.padding).shape, 3);
        const f = (xi: tf.Tensor, wi: tf.Tensor) =>
          tf.sum(
            tf.mul(
              backend === 'webgpu'
                ? conv2dFastGrad(xi as tf.Tensor4D, wi as tf.Tensor4D, c)
                : tf.conv2d(xi as tf.Tensor4D, wi as tf.Tensor4D, c.stride, c.padding),
              probe,
            ),
          );
        const [gx, gw] = tf.grads(f)([x, w]);
        return { dx: gx, dw: gw };
      });
      const out = { dx: Array.from(await dx.data()), dw: Array.from(await dw.data()) };
      tf.dispose([dx, dw]);
      return out;
    };
    for (const c of convCases) {
      const reference = await grads('cpu', c);
      const gpu = await grads('webgpu', c);
      expect(relativeError(gpu.dx, reference.dx), `dx ${JSON.stringify(c)}`).toBeLessThan(1e-4);
      expect(relativeError(gpu.dw, reference.dw), `dw ${JSON.stringify(c)}`).toBeLessThan(1e-4);
    }
    expect(convCases.length).toBe(30);
  });

  it('--engine auto passes over a software adapter and says why; --engine webgpu uses it', async () => {
    const { createLogger } = await import('../../src/shared/log.js');
    const explicit = await initEngine('webgpu', createLogger('test', 'silent'));
    expect(explicit.name).toBe('webgpu');
    if (softwareAdapterReason({ description: explicit.device }) === null) return; // a hardware GPU: auto may take it
    const auto = await initEngine('auto', createLogger('test', 'silent'));
    expect(auto.name).not.toBe('webgpu');
    expect(auto.passedOver.find((p) => p.engine === 'webgpu')?.reason).toMatch(
      /software.*slower than wasm.*--engine webgpu/,
    );
    await useBackend('webgpu');
  });
});

describe('software adapters', () => {
  it('are recognised by fallback flag, architecture or name', () => {
    expect(
      softwareAdapterReason({ description: 'NVIDIA H100 80GB HBM3', vendor: 'nvidia', architecture: 'hopper' }),
    ).toBeNull();
    expect(softwareAdapterReason({ description: 'AMD Radeon RX 7900', architecture: 'rdna-3' })).toBeNull();
    expect(softwareAdapterReason({ description: 'llvmpipe: Mesa 25.0.7', isFallbackAdapter: true })).toMatch(
      /fallback/,
    );
    expect(softwareAdapterReason({ description: 'x', architecture: 'software' })).toMatch(/software architecture/);
    expect(softwareAdapterReason({ description: 'SwiftShader Device (Subzero)' })).toMatch(/software renderer/);
    expect(softwareAdapterReason({ device: 'llvmpipe (LLVM 15.0.6, 256 bits)' })).toMatch(/software renderer/);
  });
});
