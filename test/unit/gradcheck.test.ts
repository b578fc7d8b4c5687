// Whole-model gradient checks: finite differences of the loss on the cpu engine (stock kernels),
// and the wasm engine's fast convolution gradients against the cpu engine's stock ones.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { fastGradConv, stockConv } from '../../src/shared/engine/engine.js';
import { Rng } from '../../src/shared/rng.js';
import { computeGradients, type LossOptions } from '../../src/shared/train/gradients.js';
import { expectTensorsClose, useBackend } from '../helpers.js';
import { tinyBatch, tinyModel } from '../tiny-model.js';

// Random mining with a fixed seed: the triplets do not move when the weights are perturbed; a margin
// above the largest possible d(a,p) - d(a,n) (4 on unit vectors) keeps every hinge active.
const loss: LossOptions = { mining: 'random', margin: 4.5, marginLossWeight: 0.5 };

describe('gradients of the whole loss', () => {
  it.each(['sc', 'rc'] as const)('%s: match central finite differences per parameter (cpu engine)', async (variant) => {
    await useBackend('cpu');
    const model = tinyModel({ variant });
    const batch = tinyBatch();
    const opts = { ...loss, conv: stockConv, seed: 4 };
    const evalLoss = async () => {
      // The cpu engine's reads resolve as microtasks, so without a macrotask turn this loop holds the
      // fork's event loop for the whole check (88 s for rc on a loaded CI machine); vitest's worker
      // RPC then times out at 60 s and fails the run with "Timeout calling onTaskUpdate".
      await new Promise((resolve) => setImmediate(resolve));
      const r = computeGradients(model, batch, opts);
      const { loss } = await r.readStats();
      r.dispose();
      return loss;
    };
    const analytic = computeGradients(model, batch, opts);
    const rng = new Rng(17);
    // Small steps (ReLU kinks and curvature bias larger ones); float32 rounding across a forward pass
    // (~1e-6 of a loss of ~4) then leaves a few 1e-3 of noise per quotient: the absolute term.
    const eps = 1e-3;
    const atol = 5e-3;
    // A check only means something where the true derivative is well above that noise (a zero
    // gradient must fail it), so each parameter is checked along a direction whose numeric derivative
    // is at least SIGNAL: a random one; for small parameters (BatchNorm's gamma and beta, biases)
    // otherwise the numeric gradient's own direction from coordinate differences; for large ones up
    // to three random directions.
    const SIGNAL = 4 * atol;
    const failures: string[] = [];
    const flat: { name: string; analytic: number }[] = [];
    for (const [name, variable] of model.trainable) {
      const original = variable.dataSync().slice() as Float32Array;
      const along = async (direction: Float32Array) => {
        const at = async (sign: number) => {
          variable.assign(
            tf.tensor(
              original.map((v, i) => v + sign * eps * direction[i]),
              variable.shape,
            ),
          );
          return evalLoss();
        };
        const numeric = ((await at(1)) - (await at(-1))) / (2 * eps);
        variable.assign(tf.tensor(original, variable.shape));
        return numeric;
      };
      const unit = (d: Float32Array) => {
        const norm = Math.hypot(...d);
        return d.map((v) => v / norm);
      };
      const g = analytic.grads.get(name)!.dataSync();
      const check = (direction: Float32Array, numeric: number) => {
        const exact = g.reduce((s, v, i) => s + v * direction[i], 0);
        if (Math.abs(exact - numeric) > 5e-2 * Math.max(Math.abs(exact), Math.abs(numeric)) + atol)
          failures.push(`${name}: analytic ${exact} vs numeric ${numeric}`);
      };
      let checked = false;
      for (let k = 0; k < (original.length <= 64 ? 1 : 3) && !checked; k++) {
        const direction = unit(Float32Array.from(original, () => rng.normal()));
        const numeric = await along(direction);
        if (Math.abs(numeric) >= SIGNAL) {
          check(direction, numeric);
          checked = true;
        }
      }
      if (checked || original.length > 64) {
        if (!checked) failures.push(`${name}: no random direction with a derivative above ${SIGNAL}`);
        continue;
      }
      const numericGradient = new Float32Array(original.length);
      for (let i = 0; i < original.length; i++) {
        const e = new Float32Array(original.length);
        e[i] = 1;
        numericGradient[i] = await along(e);
      }
      const size = Math.hypot(...numericGradient);
      if (size >= SIGNAL) {
        const direction = unit(numericGradient);
        check(direction, await along(direction));
      } else flat.push({ name, analytic: Math.hypot(...g) });
    }
    // Flat parameters are the biases of convolutions that BatchNorm follows (its mean subtracts them):
    // their true gradient is zero, and so must the analytic one be.
    for (const { name, analytic } of flat) {
      if (!/\/(conv\d*|projection)\/bias$/.test(name)) failures.push(`${name}: flat, but not a bias BatchNorm cancels`);
      if (analytic > 1e-5)
        failures.push(`${name}: the loss does not move with it, yet its gradient has norm ${analytic}`);
    }
    analytic.dispose();
    expect(failures).toEqual([]);
    model.dispose();
  });

  it.each(['sc', 'rc'] as const)(
    '%s: wasm engine with fast conv gradients equals cpu stock gradients',
    async (variant) => {
      const grads = async (backend: 'cpu' | 'wasm') => {
        await useBackend(backend);
        const model = tinyModel({ variant });
        const batch = tinyBatch();
        const r = computeGradients(model, batch, {
          ...loss,
          conv: backend === 'wasm' ? fastGradConv : stockConv,
          seed: 4,
        });
        const out = new Map([...r.grads].map(([k, v]) => [k, v.dataSync().slice()]));
        r.dispose();
        model.dispose();
        return out;
      };
      const cpu = await grads('cpu');
      const wasm = await grads('wasm');
      expect([...wasm.keys()]).toEqual([...cpu.keys()]);
      expectTensorsClose(wasm, cpu, 'gradient', (diff, tolerance, name) => expect(diff, name).toBeLessThan(tolerance));
    },
  );
});
