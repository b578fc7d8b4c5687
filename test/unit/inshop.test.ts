// The In-shop loader on fixtures written by the synthetic writer in the real layout, and on
// malformed copies of them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BBOX_FILE, describeCatalogue, openInshopCatalogue, PARTITION_FILE } from '../../src/shared/data/inshop.js';
import { writeSyntheticInshop } from '../../src/shared/data/synth-writer.js';
import sharp from 'sharp';
import { trainItems } from '../../src/shared/data/catalogue.js';

let base: string;
let good: string;

beforeAll(async () => {
  base = mkdtempSync(join(tmpdir(), 'tricaps-inshop-'));
  good = join(base, 'good');
  await writeSyntheticInshop({ out: good, items: 12, categories: 3, views: 4, imageSize: 32, seed: 5 });
});
afterAll(() => rmSync(base, { recursive: true, force: true }));

/** A copy of the good catalogue with its partition file rewritten by `edit`. */
function variant(name: string, edit: (lines: string[]) => string[]): string {
  const dir = join(base, name);
  cpSync(good, dir, { recursive: true });
  const file = join(dir, PARTITION_FILE);
  writeFileSync(file, edit(readFileSync(file, 'utf8').trimEnd().split('\n')).join('\n') + '\n');
  return dir;
}

const recount = (lines: string[]) => [String(lines.length - 2), ...lines.slice(1)];

describe('In-shop catalogue', () => {
  it('reads the layout: splits, items, categories from the path, boxes', async () => {
    const c = await openInshopCatalogue({ root: good, verifyImages: true });
    const d = describeCatalogue(c);
    expect(d.images).toBe(48);
    expect(d.items).toBe(12);
    expect(d.categories).toEqual(['MEN/Denim', 'MEN/Jackets_Vests', 'MEN/Pants']);
    expect(d.splits.train).toEqual({ images: 24, items: 6, categories: 3 });
    expect(d.splits.query.items).toBe(6);
    expect(d.bounding_boxes).toBe(true);
    const pixels = await c.loadImage(0, 16);
    expect(pixels).toHaveLength(16 * 16 * 3);
    expect(Math.max(...pixels)).toBeLessThanOrEqual(1);
    expect(trainItems(c).size).toBe(6);
  });

  it('is deterministic for a seed', async () => {
    const again = join(base, 'again');
    await writeSyntheticInshop({ out: again, items: 12, categories: 3, views: 4, imageSize: 32, seed: 5 });
    expect(readFileSync(join(again, PARTITION_FILE), 'utf8')).toBe(readFileSync(join(good, PARTITION_FILE), 'utf8'));
    const name = readFileSync(join(good, PARTITION_FILE), 'utf8').split('\n')[2].split(/\s+/)[0];
    expect(readFileSync(join(again, name)).equals(readFileSync(join(good, name)))).toBe(true);
  });

  it('accepts runs of spaces and tabs between fields', async () => {
    const dir = variant('spaces', (l) => l.map((line, i) => (i < 2 ? line : line.split(/\s+/).join(' \t   '))));
    expect((await openInshopCatalogue({ root: dir })).images).toHaveLength(48);
  });

  it('crops to bounding boxes when asked', async () => {
    const c = await openInshopCatalogue({ root: good, bboxCrop: true });
    const whole = await (await openInshopCatalogue({ root: good })).loadImage(0, 16);
    expect(Array.from(await c.loadImage(0, 16))).not.toEqual(Array.from(whole));
  });

  it('crops the box where it is: an image black but for a white square at (20, 8)-(27, 15)', async () => {
    const dir = join(base, 'boxed');
    cpSync(good, dir, { recursive: true });
    const c0 = await openInshopCatalogue({ root: dir });
    const path = c0.paths[0];
    const pixels = Buffer.alloc(32 * 32 * 3);
    for (let y = 8; y <= 15; y++)
      for (let x = 20; x <= 27; x++) pixels.fill(255, (y * 32 + x) * 3, (y * 32 + x) * 3 + 3);
    await sharp(pixels, { raw: { width: 32, height: 32, channels: 3 } })
      .png()
      .toFile(join(dir, path));
    const boxes = join(dir, BBOX_FILE);
    const lines = readFileSync(boxes, 'utf8').trimEnd().split('\n');
    const at = lines.findIndex((l) => l.startsWith(`${path} `));
    const f = lines[at].split(/\s+/);
    lines[at] = [...f.slice(0, 3), '20', '8', '27', '15'].join(' ');
    writeFileSync(boxes, lines.join('\n') + '\n');
    const cropped = await (await openInshopCatalogue({ root: dir, bboxCrop: true })).loadImage(0, 8);
    expect(Math.min(...cropped)).toBe(1); // all of it the white square
    const uncropped = await (await openInshopCatalogue({ root: dir })).loadImage(0, 8);
    expect(Math.min(...uncropped)).toBe(0);
  });

  it.each([
    [
      'a missing partition file',
      (dir: string) => unlinkSync(join(dir, PARTITION_FILE)),
      /list_eval_partition.txt: file not found/,
    ],
    [
      'a bad count line',
      (dir: string) => edit(dir, (l) => ['many', ...l.slice(1)]),
      /list_eval_partition.txt:1: expected the row count, found "many"/,
    ],
    [
      'a wrong header',
      (dir: string) => edit(dir, (l) => [l[0], 'image item split', ...l.slice(2)]),
      /:2: expected the header "image_name item_id evaluation_status"/,
    ],
    [
      'a malformed line',
      (dir: string) => edit(dir, (l) => [...l.slice(0, 4), 'img/MEN/Denim/x.png id_1', ...l.slice(5)]),
      /:5: expected 3 fields/,
    ],
    [
      'an unknown split name',
      (dir: string) => edit(dir, (l) => [...l.slice(0, 3), l[3].replace(/train$/, 'validation'), ...l.slice(4)]),
      /:4: unknown split "validation"/,
    ],
    [
      'a count that does not match',
      (dir: string) => edit(dir, (l) => ['99', ...l.slice(1)]),
      /declares 99 rows but the file has 48/,
    ],
    [
      'an image path outside the layout',
      (dir: string) => edit(dir, (l) => [...l.slice(0, 2), l[2].replace('img/MEN/Denim/', 'pictures/'), ...l.slice(3)]),
      /:3: image name "pictures\/.*" is not of the form img\/GENDER\/Category\/id_XXXXXXXX\/FILE/,
    ],
    [
      'an empty split',
      (dir: string) => edit(dir, (l) => recount(l.filter((line) => !line.endsWith('gallery')))),
      /the gallery split has no usable images/,
    ],
  ])('rejects %s with the file and line', async (_label, breakIt, message) => {
    const dir = join(base, `bad-${_label.replace(/\W+/g, '-')}`);
    cpSync(good, dir, { recursive: true });
    breakIt(dir);
    await expect(openInshopCatalogue({ root: dir })).rejects.toThrow(message);
  });

  it('rejects a malformed bounding box line', async () => {
    const dir = join(base, 'badbox');
    cpSync(good, dir, { recursive: true });
    const file = join(dir, BBOX_FILE);
    const lines = readFileSync(file, 'utf8').trimEnd().split('\n');
    lines[3] = lines[3].replace(/\d+ \d+ \d+ \d+$/, '30 10 5 20');
    writeFileSync(file, lines.join('\n'));
    await expect(openInshopCatalogue({ root: dir })).rejects.toThrow(
      /list_bbox_inshop.txt:4: bad bounding box "30 10 5 20"/,
    );
  });

  it('fails on a missing image, or skips and counts it', async () => {
    const dir = join(base, 'missing');
    cpSync(good, dir, { recursive: true });
    const name = readFileSync(join(dir, PARTITION_FILE), 'utf8').split('\n')[5].split(/\s+/)[0];
    unlinkSync(join(dir, name));
    await expect(openInshopCatalogue({ root: dir })).rejects.toThrow(
      new RegExp(`:6: image .*${name.split('/').pop()} is missing \\(use --on-bad-image skip`),
    );
    const c = await openInshopCatalogue({ root: dir, onBadImage: 'skip' });
    expect(c.images).toHaveLength(47);
    expect(c.skipped).toEqual([expect.objectContaining({ line: 6, reason: expect.stringMatching(/is missing/) })]);
  });

  it('finds a corrupt image when verifying, and names it when loading', async () => {
    const dir = join(base, 'corrupt');
    cpSync(good, dir, { recursive: true });
    const name = readFileSync(join(dir, PARTITION_FILE), 'utf8').split('\n')[2].split(/\s+/)[0];
    writeFileSync(join(dir, name), 'not an image');
    await expect(openInshopCatalogue({ root: dir, verifyImages: true })).rejects.toThrow(
      /:3: image .* cannot be decoded/,
    );
    const skipping = await openInshopCatalogue({ root: dir, verifyImages: true, onBadImage: 'skip' });
    expect(skipping.skipped.map((s) => s.line)).toEqual([3]);
    const lazy = await openInshopCatalogue({ root: dir });
    await expect(lazy.loadImage(0, 16)).rejects.toThrow(
      /cannot decode image .*tricaps data inspect --root .* --verify-images/,
    );
  });

  it('fails on a train item with a single image, or skips it', async () => {
    // Keep only the first image of the first train item.
    let keptLine = 0;
    const dir = variant('single', (l) => {
      const firstTrain = l.findIndex((line, i) => i >= 2 && line.endsWith('train'));
      const item = l[firstTrain].split(/\s+/)[1];
      keptLine = firstTrain + 1;
      return recount(
        l.filter((line, i) => i <= firstTrain || !(line.split(/\s+/)[1] === item && line.endsWith('train'))),
      );
    });
    await expect(openInshopCatalogue({ root: dir })).rejects.toThrow(
      new RegExp(`:${keptLine}: train item id_\\d+ has a single image, so it cannot form a positive pair`),
    );
    const c = await openInshopCatalogue({ root: dir, onBadImage: 'skip' });
    expect(c.skipped).toHaveLength(1);
    expect(trainItems(c).size).toBe(5);
  });
});

function edit(dir: string, f: (lines: string[]) => string[]): void {
  const file = join(dir, PARTITION_FILE);
  writeFileSync(file, f(readFileSync(file, 'utf8').trimEnd().split('\n')).join('\n') + '\n');
}
