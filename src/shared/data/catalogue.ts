// The narrow data interface the trainer and evaluation see: a list of labelled images and a way to
// load one as pixels. The synthetic generator implements it today; the In-shop loader plugs in here.

export const SPLITS = ['train', 'query', 'gallery'] as const;
export type Split = (typeof SPLITS)[number];

export interface ImageRecord {
  /** Index into Catalogue.images. */
  id: number;
  /** Item (product) index: images of one item are positives of each other. */
  itemId: number;
  /** Category index into Catalogue.categories. */
  category: number;
  split: Split;
}

export interface Catalogue {
  name: string;
  categories: string[];
  images: ImageRecord[];
  /** Pixels [size, size, 3] (HWC, row-major) in [0, 1]. */
  loadImage(id: number, size: number): Promise<Float32Array>;
}

export function imagesOf(catalogue: Catalogue, split: Split): ImageRecord[] {
  return catalogue.images.filter((r) => r.split === split);
}

/** Train images grouped by item, items in ascending id order. */
export function trainItems(catalogue: Catalogue): Map<number, number[]> {
  const byItem = new Map<number, number[]>();
  for (const r of catalogue.images) {
    if (r.split !== 'train') continue;
    const list = byItem.get(r.itemId) ?? [];
    list.push(r.id);
    byItem.set(r.itemId, list);
  }
  return new Map([...byItem].sort((a, b) => a[0] - b[0]));
}
