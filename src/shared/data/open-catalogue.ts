// The catalogue a training configuration names: an In-shop root on disk, or the built-in synthetic
// one. The coordinator and every worker open it the same way (workers load their own images).
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
export function catalogueFingerprint(c: Catalogue): { name: string; images: number; categories: number } {
  return { name: c.name, images: c.images.length, categories: c.categories.length };
}
