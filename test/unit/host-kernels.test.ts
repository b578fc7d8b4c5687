// The coordinator's host-side arithmetic without a network: the Adam kernel (WebAssembly SIMD and
// its JavaScript twin give the same bits) and the buffer pool that recycles decoded tensors and a
// ring's assembled vector.
import { describe, expect, it } from 'vitest';
import { adamStep, nextAccumulators } from '../../src/coordinator/host-adam.js';
import { AdamArrays } from '../../src/coordinator/kernels/adam-kernel.js';
import { BufferPool } from '../../src/shared/buffer-pool.js';
import { Rng } from '../../src/shared/rng.js';

describe('host Adam kernel', () => {
  it('SIMD and JavaScript take the same steps, bit for bit, over lengths that are not multiples of four', () => {
    for (const trainable of [1, 3, 4, 5, 1001]) {
      const extra = 7;
      const simd = new AdamArrays(trainable + extra, trainable);
      const js = new AdamArrays(trainable + extra, trainable, { simd: false });
      expect(simd.simd).toBe(true); // Node 20 has WebAssembly SIMD: the fast path is the one tested
      expect(js.simd).toBe(false);
      const rng = new Rng(trainable);
      const w0 = Float32Array.from({ length: trainable + extra }, () => rng.normal());
      simd.weights.set(w0);
      js.weights.set(w0);
      let c = { learningRate: 3e-3, beta1: 0.9, beta2: 0.999, epsilon: 1e-7, accBeta1: 0.9, accBeta2: 0.999 };
      for (let step = 0; step < 5; step++) {
        const g = Float32Array.from({ length: trainable }, () => rng.normal() * 10 ** rng.uniform(-9, 1));
        simd.gradient.set(g);
        js.gradient.set(g);
        simd.step(c);
        js.step(c);
        c = { ...c, ...nextAccumulators(c) };
      }
      expect(Array.from(simd.weights)).toEqual(Array.from(js.weights));
      expect(Array.from(simd.m)).toEqual(Array.from(js.m));
      expect(Array.from(simd.v)).toEqual(Array.from(js.v));
      // Buffers (past the trainable part) are the kernel's to leave alone.
      expect(Array.from(simd.weights.subarray(trainable))).toEqual(Array.from(w0.subarray(trainable)));
      expect(Array.from(simd.weights.subarray(0, trainable))).not.toEqual(Array.from(w0.subarray(0, trainable)));
    }
  });

  it('refuses arrays that do not fit together', () => {
    expect(() => new AdamArrays(3, 4)).toThrow(/4 trainable values in a vector of 3/);
    const c = { learningRate: 1, beta1: 0.9, beta2: 0.999, epsilon: 1e-7, accBeta1: 0.9, accBeta2: 0.999 };
    expect(() =>
      adamStep(new Float32Array(4), new Float32Array(2), new Float32Array(2), new Float32Array(3), 0, c),
    ).toThrow(/3 gradients at 0 for 4 weights and 2\/2 moments/);
    const f = (n: number) => new Float32Array(n);
    const refusals: [Float32Array, Float32Array, Float32Array, Float32Array, number][] = [
      [f(4), f(2), f(2), f(1), -1], // before the start
      [f(4), f(2), f(2), f(1), 2], // past the moments' end
      [f(4), f(2), f(3), f(1), 0], // moments of different lengths
      [f(1), f(2), f(2), f(1), 0], // more moments than weights
    ];
    for (const [w, m, v, g, from] of refusals)
      expect(() => adamStep(w, m, v, g, from, c), `${w.length} ${m.length} ${v.length} ${g.length} @${from}`).toThrow(
        /^adamStep: \d+ gradients at -?\d+ for \d+ weights and \d+\/\d+ moments$/,
      );
    // The edges that fit: the last parameter, and moments as long as the weights.
    expect(() => adamStep(f(2), f(2), f(2), f(1), 1, c)).not.toThrow();
  });
});

describe('buffer pool', () => {
  it('recycles whole arrays, returns a view of its own array as the whole array once, and never keeps foreign views', () => {
    const pool = new BufferPool(1 << 20);
    const a = pool.take(100);
    pool.release([a]);
    expect(pool.take(100)).toBe(a);
    // A ring's vector: its tensors come back as views; the vector is taken back once.
    const vector = pool.take(1000);
    pool.release([vector.subarray(0, 10), vector.subarray(10, 1000), vector.subarray(5, 6)]);
    pool.release([vector.subarray(0, 10)]); // again, in a later call: still kept once
    expect(pool.take(1000).buffer).toBe(vector.buffer);
    expect(pool.take(1000).buffer).not.toBe(vector.buffer);
    // Someone else's array: a view of it would alias its owner, so it is not kept.
    const foreign = new Float32Array(64);
    pool.release([foreign.subarray(0, 32)]);
    expect(pool.take(32).buffer).not.toBe(foreign.buffer);
    // Bounded: past maxBytes nothing more is kept.
    const small = new BufferPool(400);
    const big = small.take(200);
    small.release([big]);
    expect(small.take(200)).not.toBe(big);
  });
});
