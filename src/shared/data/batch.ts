// Turns image ids into an input tensor [n, S, S, 3].
import * as tf from '@tensorflow/tfjs-core';
import sharp from 'sharp';
import { oneLine, UsageError } from '../errors.js';
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

/**
 * An image file as the model's input: decoded, resized to size x size (stretched, as the catalogue
 * loader does), RGB in [0, 1], [size, size, 3] row-major. `what` names the file in the error.
 */
export async function decodeImageFile(path: string, size: number, what = 'the image'): Promise<Float32Array> {
  let raw: Buffer;
  try {
    raw = await sharp(path).resize(size, size, { fit: 'fill' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
  } catch (err) {
    throw new UsageError(`${path}: cannot read ${what} (${oneLine(err)})`);
  }
  return Float32Array.from(raw, (v) => v / 255);
}
