// Turns image ids into an input tensor [n, S, S, 3].
import * as tf from '@tensorflow/tfjs-core';
import type { Catalogue } from './catalogue.js';
import { applyAugmentation, augmentParams, type AugmentConfig, type SampleKey } from './augment.js';

export async function loadImages(catalogue: Catalogue, ids: number[], size: number): Promise<Float32Array> {
  const pixels = new Float32Array(ids.length * size * size * 3);
  const images = await Promise.all(ids.map((id) => catalogue.loadImage(id, size)));
  images.forEach((img, i) => pixels.set(img, i * size * size * 3));
  return pixels;
}

/**
 * Pixels of a training batch, each image augmented as its sample key says (the same images and
 * augmentations whichever process loads them: `key` names the step and shard, `sample` the image).
 */
export async function loadTrainingImages(
  catalogue: Catalogue,
  ids: number[],
  size: number,
  augment: AugmentConfig,
  key: Omit<SampleKey, 'sample'>,
): Promise<Float32Array> {
  const pixels = await loadImages(catalogue, ids, size);
  if (augment.enabled) {
    const per = size * size * 3;
    for (let i = 0; i < ids.length; i++) {
      const view = pixels.subarray(i * per, (i + 1) * per);
      view.set(applyAugmentation(view, size, augmentParams(augment, { ...key, sample: i })));
    }
  }
  return pixels;
}

export async function loadBatchTensor(catalogue: Catalogue, ids: number[], size: number): Promise<tf.Tensor4D> {
  return tf.tensor4d(await loadImages(catalogue, ids, size), [ids.length, size, size, 3]);
}
