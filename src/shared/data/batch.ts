// Turns image ids into an input tensor [n, S, S, 3].
import * as tf from '@tensorflow/tfjs-core';
import type { Catalogue } from './catalogue.js';

export async function loadImages(catalogue: Catalogue, ids: number[], size: number): Promise<Float32Array> {
  const pixels = new Float32Array(ids.length * size * size * 3);
  const images = await Promise.all(ids.map((id) => catalogue.loadImage(id, size)));
  images.forEach((img, i) => pixels.set(img, i * size * size * 3));
  return pixels;
}

export async function loadBatchTensor(catalogue: Catalogue, ids: number[], size: number): Promise<tf.Tensor4D> {
  return tf.tensor4d(await loadImages(catalogue, ids, size), [ids.length, size, size, 3]);
}
