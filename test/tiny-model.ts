// A tiny TriCapsNet and a fixed PK batch for gradient and training tests.
import * as tf from '@tensorflow/tfjs-core';
import { buildArchitecture } from '../src/shared/model/architecture.js';
import { modelConfig, type ModelConfigInput } from '../src/shared/model/config.js';
import { createModelState, type ModelState } from '../src/shared/model/params.js';
import { Rng } from '../src/shared/rng.js';
import type { TrainBatch } from '../src/shared/train/gradients.js';

export function tinyModel(overrides: ModelConfigInput = {}, seed = 3): ModelState {
  return createModelState(
    buildArchitecture(
      modelConfig({
        imageSize: 16,
        width: 0.0625,
        categories: 3,
        primaryCapsuleDim: 4,
        classCapsuleDim: 4,
        dropout: 0,
        ...overrides,
      }),
    ),
    seed,
  );
}

/** P items x K images of random pixels; item i has category i % 3. */
export function tinyBatch(items = 4, perItem = 2, size = 16, seed = 11): TrainBatch {
  const rng = new Rng(seed);
  const n = items * perItem;
  const images = tf.tensor4d(
    Float32Array.from({ length: n * size * size * 3 }, () => rng.next()),
    [n, size, size, 3],
  );
  const itemIds = Array.from({ length: n }, (_, i) => Math.floor(i / perItem));
  return { images, itemIds, categories: itemIds.map((i) => i % 3) };
}
