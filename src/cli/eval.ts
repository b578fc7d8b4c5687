// `tricaps eval` and `tricaps search`: retrieval with saved weights on an In-shop catalogue.
import type { Command } from 'commander';
import { resolve } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { loadWeights, resolveCheckpoint } from '../shared/checkpoint-format.js';
import { decodeImageFile } from '../shared/data/batch.js';
import { imagesOf } from '../shared/data/catalogue.js';
import { openInshopCatalogue } from '../shared/data/inshop.js';
import { ENGINE_NAMES, initEngine } from '../shared/engine/engine.js';
import { evaluateRetrieval, maskedEmbeddings, unitCapsules } from '../shared/eval/evaluate.js';
import { DEFAULT_KS } from '../shared/eval/recall.js';
import { rankGallery, writeGrid, type GridTile } from '../shared/eval/search.js';
import { UsageError } from '../shared/errors.js';
import { createLogger } from '../shared/log.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { MASK_MODES, type MaskMode } from '../shared/model/embedding.js';
import { createModelState } from '../shared/model/params.js';
import { forward } from '../shared/model/tricapsnet.js';
import { l2Normalize } from '../shared/model/squash.js';
import { recallLine } from './train.js';
import { choiceOption, intOption } from './options.js';

export async function openModel(checkpoint: string, engineChoice: (typeof ENGINE_NAMES)[number]) {
  const dir = resolveCheckpoint(checkpoint);
  const saved = loadWeights(dir);
  const engine = await initEngine(engineChoice, createLogger('eval'));
  const arch = buildArchitecture(saved.modelConfig);
  for (const p of arch.params) {
    if (!saved.values.has(p.name))
      throw new UsageError(
        `${dir}: weights lack parameter ${p.name}; the checkpoint does not match its own model config`,
      );
  }
  return { dir, saved, engine, model: createModelState(arch, 0, saved.values) };
}

export function registerEvalCommands(program: Command): void {
  program
    .command('eval')
    .description('Recall@K (K = 1, 10, 20, 30, 40, 50) and mAP@R of query vs gallery images')
    .requiredOption('--checkpoint <dir>', 'a checkpoint directory (model.json) or a checkpoint root (newest step-*)')
    .requiredOption('--data <dir>', 'In-shop catalogue root')
    .option('--mask <m>', `capsule mask (${MASK_MODES.join('|')})`, choiceOption(MASK_MODES), 'predicted')
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--batch <n>', 'images per forward pass', intOption(1, 4096), 64)
    .option('--json', 'print JSON')
    .action(async (o) => {
      const catalogue = await openInshopCatalogue({ root: o.data });
      const { dir, saved, engine, model } = await openModel(o.checkpoint, o.engine);
      if (saved.categories.length !== catalogue.categories.length) {
        throw new UsageError(
          `${dir} was trained on ${saved.categories.length} categories, ${o.data} has ${catalogue.categories.length}`,
        );
      }
      const [r] = await evaluateRetrieval(model, catalogue, {
        masks: [o.mask as MaskMode],
        batchSize: o.batch,
        conv: engine.conv,
        ks: DEFAULT_KS,
      });
      if (o.json)
        console.log(JSON.stringify({ checkpoint: dir, step: saved.step, data: o.data, engine: engine.name, ...r }));
      else {
        console.log(
          `${dir} (step ${saved.step}) on ${o.data}: ${r.queries} queries, ${r.gallery} gallery images${r.queriesWithoutMatch ? `, ${r.queriesWithoutMatch} queries without a gallery match excluded` : ''}`,
        );
        console.log(recallLine('eval', r));
      }
      model.dispose();
    });

  program
    .command('search')
    .description('rank gallery images for a query image; --grid draws the query and its top-k')
    .requiredOption('--checkpoint <dir>', 'a checkpoint directory or root')
    .requiredOption('--data <dir>', 'In-shop catalogue root (its gallery is searched)')
    .requiredOption('--query <image>', 'query image file (jpg/png)')
    .option('-k, --top <n>', 'results to show', intOption(1, 1000), 10)
    .option('--mask <m>', `capsule mask (${MASK_MODES.join('|')})`, choiceOption(MASK_MODES), 'predicted')
    .option('--engine <e>', `compute engine (${ENGINE_NAMES.join('|')})`, choiceOption(ENGINE_NAMES), 'auto')
    .option('--grid <png>', 'write the query and its top-k as a PNG grid')
    .option('--json', 'print JSON')
    .action(async (o) => {
      const catalogue = await openInshopCatalogue({ root: o.data });
      const { model, engine } = await openModel(o.checkpoint, o.engine);
      const size = model.arch.config.imageSize;
      const queryPixels = await decodeImageFile(o.query, size, 'the query image');
      // The query's item, when the image belongs to the catalogue (marks the true matches).
      const abs = resolve(o.query);
      const own = catalogue.paths.findIndex((p) => resolve(o.data, p) === abs);
      const queryItem = own >= 0 ? catalogue.images[own].itemId : undefined;
      const queryCategory = own >= 0 ? catalogue.images[own].category : 0;
      const gallery = imagesOf(catalogue, 'gallery');
      const g = await unitCapsules(model, catalogue, gallery, { batchSize: 64, conv: engine.conv });
      const [unitT, predictedT] = tf.tidy(() => {
        const { capsules } = forward(model, tf.tensor4d(queryPixels, [1, size, size, 3]), {
          training: false,
          conv: engine.conv,
        });
        return [l2Normalize(capsules), tf.argMax(tf.sum(tf.square(capsules), -1), 1)];
      });
      const q = { unit: (await unitT.data()) as Float32Array, predicted: (await predictedT.data())[0] };
      tf.dispose([unitT, predictedT]);
      const qc = { unit: q.unit, categories: g.categories, dim: g.dim, predicted: Int32Array.from([q.predicted]) };
      const dim = g.categories * g.dim;
      const hits = rankGallery(
        maskedEmbeddings(qc, o.mask, [queryCategory]),
        maskedEmbeddings(
          g,
          o.mask,
          gallery.map((r) => r.category),
        ),
        dim,
        o.top,
      );
      const rows = hits.map((h) => {
        const record = gallery[h.galleryIndex];
        return {
          rank: h.rank,
          distance: h.distance,
          image: catalogue.paths[record.id],
          item: catalogue.itemNames[record.itemId],
          category: catalogue.categories[record.category],
          match: queryItem === undefined ? null : record.itemId === queryItem,
        };
      });
      if (o.grid) {
        const tiles: GridTile[] = [{ pixels: queryPixels, match: null }];
        for (const row of rows)
          tiles.push({
            pixels: await catalogue.loadImage(gallery[hits[row.rank - 1].galleryIndex].id, size),
            match: Boolean(row.match),
          });
        await writeGrid(o.grid, tiles, size);
      }
      if (o.json)
        console.log(
          JSON.stringify({
            query: o.query,
            query_item: queryItem === undefined ? null : catalogue.itemNames[queryItem],
            predicted_category: catalogue.categories[q.predicted],
            results: rows,
            grid: o.grid ?? null,
          }),
        );
      else {
        console.log(
          `query ${o.query}${queryItem !== undefined ? ` (item ${catalogue.itemNames[queryItem]})` : ''}, predicted category ${catalogue.categories[q.predicted]}`,
        );
        for (const r of rows)
          console.log(
            `${String(r.rank).padStart(3)}  ${r.distance.toFixed(4)}  ${r.match ? '*' : ' '} ${r.item}  ${r.image}`,
          );
        if (o.grid) console.log(`grid written to ${o.grid}`);
      }
      model.dispose();
    });
}
