// The fast convolution gradients (forward kernels only) against the cpu backend's own gradients,
// for every kernel size / stride / padding the SC and RC models use, on odd and even sizes.
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { conv2dFastGrad, axisGeometry, phaseFilters } from '../../src/shared/engine/fast-conv.js';
import { relativeError, seededNormal, useBackend } from '../helpers.js';

type Case = { kernel: number; stride: number; padding: 'same' | 'valid'; size: number; cin: number; cout: number };
const cases: Case[] = [];
for (const [kernel, stride] of [
  [7, 2],
  [3, 2],
  [3, 1],
  [1, 2],
  [7, 1],
]) {
  for (const size of [9, 12, 16]) {
    for (const padding of ['same', 'valid'] as const) {
      if (padding === 'valid' && size < kernel) continue;
      cases.push({ kernel, stride, padding, size, cin: 3, cout: 5 });
    }
  }
}

async function gradients(backend: 'cpu' | 'wasm', c: Case, fast: boolean) {
  await useBackend(backend);
  return tf.tidy(() => {
    const x = seededNormal([2, c.size, c.size + 1, c.cin], 1) as tf.Tensor4D;
    const w = seededNormal([c.kernel, c.kernel, c.cin, c.cout], 2) as tf.Tensor4D;
    const probe = seededNormal(tf.conv2d(x, w, c.stride, c.padding).shape, 3);
    const f = (xi: tf.Tensor, wi: tf.Tensor) =>
      tf.sum(
        tf.mul(
          fast
            ? conv2dFastGrad(xi as tf.Tensor4D, wi as tf.Tensor4D, c)
            : tf.conv2d(xi as tf.Tensor4D, wi as tf.Tensor4D, c.stride, c.padding),
          probe,
        ),
      );
    const [dx, dw] = tf.grads(f)([x, w]);
    return { dx: dx.dataSync().slice(), dw: dw.dataSync().slice() };
  });
}

describe('fast convolution gradients', () => {
  it.each(cases)('k$kernel s$stride $padding size $size matches cpu stock gradients', async (c) => {
    const reference = await gradients('cpu', c, false);
    const fastWasm = await gradients('wasm', c, true);
    expect(relativeError(fastWasm.dx, reference.dx)).toBeLessThan(1e-4);
    expect(relativeError(fastWasm.dw, reference.dw)).toBeLessThan(1e-4);
  });

  it('skips the input gradient when asked (zeros, filter gradient still exact)', async () => {
    const c: Case = { kernel: 7, stride: 2, padding: 'same', size: 16, cin: 3, cout: 4 };
    const reference = await gradients('cpu', c, false);
    await useBackend('wasm');
    const { dx, dw } = tf.tidy(() => {
      const x = seededNormal([2, 16, 17, 3], 1) as tf.Tensor4D;
      const w = seededNormal([7, 7, 3, 4], 2) as tf.Tensor4D;
      const probe = seededNormal(tf.conv2d(x, w, 2, 'same').shape, 3);
      const [gx, gw] = tf.grads((xi: tf.Tensor, wi: tf.Tensor) =>
        tf.sum(tf.mul(conv2dFastGrad(xi as tf.Tensor4D, wi as tf.Tensor4D, { ...c, inputGrad: false }), probe)),
      )([x, w]);
      return { dx: gx.dataSync().slice(), dw: gw.dataSync().slice() };
    });
    expect(Math.max(...dx.map(Math.abs))).toBe(0);
    expect(relativeError(dw, reference.dw)).toBeLessThan(1e-4);
  });

  it('builds the same phase sub-filters on the host (cpu/wasm) and with gathers (GPU backends)', async () => {
    await useBackend('cpu');
    for (const [kernel, stride] of [
      [7, 2],
      [3, 2],
      [1, 2],
      [3, 1],
    ]) {
      const w = seededNormal([kernel, kernel, 3, 5], kernel * 10 + stride) as tf.Tensor4D;
      const host = phaseFilters(w, stride, true);
      const device = phaseFilters(w, stride, false);
      host.forEach((row, rh) =>
        row.forEach((f, rw) => {
          const g = device[rh][rw];
          if (f === null || g === null) return expect(g).toBe(f);
          expect(g.shape).toEqual(f.shape);
          expect(Array.from(g.dataSync())).toEqual(Array.from(f.dataSync()));
        }),
      );
    }
  });

  it('follows TensorFlow padding geometry', () => {
    expect(axisGeometry(256, 7, 2, 'same')).toEqual({ size: 256, out: 128, padBefore: 2, extent: 261 });
    expect(axisGeometry(9, 3, 2, 'valid')).toEqual({ size: 9, out: 4, padBefore: 0, extent: 9 });
    expect(axisGeometry(12, 3, 2, 'valid')).toEqual({ size: 12, out: 5, padBefore: 0, extent: 11 });
  });
});
