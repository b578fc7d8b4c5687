// The catalogue a training configuration names: an In-shop root on disk, or the built-in synthetic
// one. The coordinator and every worker open it the same way (workers load their own images).
import { createHash } from 'node:crypto';
import type { Catalogue } from './catalogue.js';
import { openInshopCatalogue } from './inshop.js';
import { syntheticCatalogue } from './synthetic.js';
import type { TrainConfig } from '../train-config.js';

export async function openTrainingCatalogue(data: TrainConfig['data']): Promise<Catalogue> {
  return data.root
    ? openInshopCatalogue({ root: data.root, onBadImage: data.onBadImage, bboxCrop: data.bboxCrop })
    : syntheticCatalogue(data);
}

/** What must agree between the coordinator's catalogue and a worker's (same data, same order). */
export function catalogueFingerprint(c: Catalogue): {
  name: string;
  images: number;
  categories: number;
  labels: string;
} {
  return { name: c.name, images: c.images.length, categories: c.categories.length, labels: labelsDigest(c) };
}

/**
 * A digest of what training reads by index: the category names and every image's item, category
 * and split, in order. Two catalogues with the same counts but other labels (another catalogue at
 * the same path) differ here.
 */
function labelsDigest(c: Catalogue): string {
  const h = createHash('sha256').update(JSON.stringify(c.categories));
  for (const r of c.images) h.update(`${r.itemId} ${r.category} ${r.split}\n`);
  return h.digest('hex').slice(0, 16);
}
