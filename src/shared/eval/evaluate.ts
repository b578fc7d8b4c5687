// Embeds query and gallery images in batches and scores retrieval (exact k-NN, squared L2) for one
// or more capsule masks. Memory stays bounded: unit capsules live on the host ([n, categories*dim]),
// distances are computed one query block at a time.
import * as tf from '@tensorflow/tfjs-core';
import type { ConvFn } from '../engine/engine.js';
import { imagesOf, type Catalogue, type ImageRecord } from '../data/catalogue.js';
import { loadBatchTensor } from '../data/batch.js';
import { capsuleLengths, type MaskMode } from '../model/embedding.js';
import type { ModelState } from '../model/params.js';
import { l2Normalize } from '../model/squash.js';
import { forward } from '../model/tricapsnet.js';
import { DEFAULT_KS, RecallAccumulator, type RecallResult } from './recall.js';

export interface EmbedOptions {
  batchSize: number;
  conv?: ConvFn;
}

export interface UnitCapsules {
  /** L2-normalised class capsules, [n, categories, dim] row-major. */
  unit: Float32Array;
  categories: number;
  dim: number;
  /** Longest capsule per image. */
  predicted: Int32Array;
}

export async function unitCapsules(
  model: ModelState,
  catalogue: Catalogue,
  records: ImageRecord[],
  opts: EmbedOptions,
): Promise<UnitCapsules> {
  const size = model.arch.config.imageSize;
  const [categories, dim] = model.arch.outputShape;
  const unit = new Float32Array(records.length * categories * dim);
  const predicted = new Int32Array(records.length);
  for (let start = 0; start < records.length; start += opts.batchSize) {
    const chunk = records.slice(start, start + opts.batchSize);
    const images = await loadBatchTensor(
      catalogue,
      chunk.map((r) => r.id),
      size,
    );
    const [u, p] = tf.tidy(() => {
      const { capsules } = forward(model, images, { training: false, conv: opts.conv });
      return [l2Normalize(capsules), tf.argMax(capsuleLengths(capsules), 1)];
    });
    unit.set(await u.data(), start * categories * dim);
    predicted.set(await p.data(), start);
    tf.dispose([images, u, p]);
  }
  return { unit, categories, dim, predicted };
}

/** Flattened embeddings [n, categories*dim] under a mask (see model/embedding.ts). */
export function maskedEmbeddings(c: UnitCapsules, mask: MaskMode, labels: ArrayLike<number>): Float32Array {
  if (mask === 'none') return c.unit;
  const out = new Float32Array(c.unit.length);
  const n = c.predicted.length;
  for (let i = 0; i < n; i++) {
    const keep = mask === 'oracle' ? labels[i] : c.predicted[i];
    const offset = (i * c.categories + keep) * c.dim;
    out.set(c.unit.subarray(offset, offset + c.dim), offset);
  }
  return out;
}

export interface EvaluationResult extends RecallResult {
  mask: MaskMode;
  /** Fraction of query+gallery images whose longest capsule is their category. */
  categoryAccuracy: number;
}

export async function evaluateRetrieval(
  model: ModelState,
  catalogue: Catalogue,
  opts: EmbedOptions & { masks: MaskMode[]; ks?: readonly number[]; queryBlock?: number },
): Promise<EvaluationResult[]> {
  const queries = imagesOf(catalogue, 'query');
  const gallery = imagesOf(catalogue, 'gallery');
  if (!queries.length || !gallery.length)
    throw new Error(
      `evaluation needs query and gallery images; ${catalogue.name} has ${queries.length} and ${gallery.length}`,
    );
  const q = await unitCapsules(model, catalogue, queries, opts);
  const g = await unitCapsules(model, catalogue, gallery, opts);
  let correct = 0;
  queries.forEach((r, i) => (correct += q.predicted[i] === r.category ? 1 : 0));
  gallery.forEach((r, i) => (correct += g.predicted[i] === r.category ? 1 : 0));
  const categoryAccuracy = correct / (queries.length + gallery.length);
  const dim = q.categories * q.dim;
  const results: EvaluationResult[] = [];
  for (const mask of opts.masks) {
    const qe = maskedEmbeddings(
      q,
      mask,
      queries.map((r) => r.category),
    );
    const ge = maskedEmbeddings(
      g,
      mask,
      gallery.map((r) => r.category),
    );
    const acc = new RecallAccumulator(
      opts.ks ?? DEFAULT_KS,
      gallery.map((r) => r.itemId),
    );
    const block = opts.queryBlock ?? 256;
    const galleryT = tf.tensor2d(ge, [gallery.length, dim]);
    const gallerySq = tf.sum(tf.square(galleryT), 1);
    for (let start = 0; start < queries.length; start += block) {
      const rows = Math.min(block, queries.length - start);
      const d = tf.tidy(() => {
        const qt = tf.tensor2d(qe.subarray(start * dim, (start + rows) * dim), [rows, dim]);
        const qSq = tf.sum(tf.square(qt), 1, true);
        return tf.relu(tf.sub(tf.add(qSq, gallerySq), tf.mul(tf.matMul(qt, galleryT, false, true), 2)));
      });
      acc.addBlock(
        await d.data(),
        queries.slice(start, start + rows).map((r) => r.itemId),
      );
      d.dispose();
    }
    tf.dispose([galleryT, gallerySq]);
    results.push({ mask, ...acc.result(), categoryAccuracy });
  }
  return results;
}
