// A wasm heap failure is explained as a resource limit (own file: it leaves the wasm module dead).
import { describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs';
import { explainResourceFailure } from '../../src/shared/errors.js';
import { useBackend } from '../helpers.js';

describe('wasm memory limit', () => {
  it('an output beyond the 4 GB heap fails inside WebAssembly and gets an actionable explanation', async () => {
    await useBackend('wasm');
    let caught: unknown;
    try {
      tf.tile(tf.ones([1, 1000, 1000]), [1100, 1, 1]); // 4.4 GB of float32
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(WebAssembly.RuntimeError);
    expect(explainResourceFailure(caught)).toMatch(
      /wasm engine failed inside WebAssembly .* memory \(at most 4 GB\) ran out\. Use fewer images per step \(--batch-triplets\)/,
    );
    expect(explainResourceFailure(new Error('other'))).toBeUndefined();
  });
});
