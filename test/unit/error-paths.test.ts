// Error paths that the CLI's own validation keeps users from reaching, triggered directly.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import '@tensorflow/tfjs';
import { initEngine } from '../../src/shared/engine/engine.js';
import { syntheticCatalogue } from '../../src/shared/data/synthetic.js';
import { buildArchitecture } from '../../src/shared/model/architecture.js';
import { modelConfig } from '../../src/shared/model/config.js';
import { createModelState } from '../../src/shared/model/params.js';
import { loadWeights, resolveCheckpoint } from '../../src/shared/checkpoint-format.js';
import { evaluateRetrieval } from '../../src/shared/eval/evaluate.js';
import { openInshopCatalogue, BBOX_FILE } from '../../src/shared/data/inshop.js';
import { writeSyntheticInshop } from '../../src/shared/data/synth-writer.js';
import { useBackend } from '../helpers.js';
import { tinyModel } from '../tiny-model.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tricaps-errors-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('error paths', () => {
  it('an unknown engine name is refused with the choices', async () => {
    await expect(initEngine('gpu' as never)).rejects.toThrow(
      /unknown engine "gpu": choose one of auto, tensorflow, webgpu, wasm, cpu/,
    );
  });

  it('the synthetic catalogue refuses impossible shapes', () => {
    expect(() => syntheticCatalogue({ items: 10, categories: 30, views: 4, seed: 1 })).toThrow(/at most 23 categories/);
    expect(() => syntheticCatalogue({ items: 10, categories: 3, views: 1, seed: 1 })).toThrow(/at least 2 views/);
  });

  it('model state refuses values of the wrong size', async () => {
    await useBackend('cpu');
    const arch = buildArchitecture(
      modelConfig({ imageSize: 16, width: 0.0625, categories: 3, primaryCapsuleDim: 4, classCapsuleDim: 4 }),
    );
    expect(() => createModelState(arch, 1, new Map([['stem/conv/bias', new Float32Array(99)]]))).toThrow(
      /stem\/conv\/bias: 99 values for shape \[4\]/,
    );
  });

  it('evaluation needs query and gallery images', async () => {
    await useBackend('cpu');
    const model = tinyModel();
    const trainOnly = { ...syntheticCatalogue({ items: 8, categories: 3, views: 2, seed: 1 }), name: 'train-only' };
    trainOnly.images = trainOnly.images.map((r) => ({ ...r, split: 'train' as const }));
    await expect(evaluateRetrieval(model, trainOnly, { masks: ['predicted'], batchSize: 4 })).rejects.toThrow(
      /train-only has 0 and 0/,
    );
    model.dispose();
  });

  it('checkpoints: missing, not ours, or a root without steps', () => {
    expect(() => resolveCheckpoint(join(dir, 'nope'))).toThrow(/no such checkpoint directory/);
    const fake = join(dir, 'fake');
    mkdirSync(fake);
    writeFileSync(join(fake, 'model.json'), JSON.stringify({ format: 'keras', weightsManifest: [] }));
    expect(() => loadWeights(fake)).toThrow(/model.json: not a tricaps checkpoint \(format: /);
    writeFileSync(join(fake, 'model.json'), '{ broken');
    expect(() => loadWeights(fake)).toThrow(/not a tricaps checkpoint/);
    expect(() => loadWeights(dir)).toThrow(/no model.json/);
    const empty = join(dir, 'empty-root');
    mkdirSync(empty);
    expect(() => resolveCheckpoint(empty)).toThrow(
      /empty-root: holds no checkpoint \(no model.json, no step-\* directories\)/,
    );
  });

  it('a bounding-box crop needs the bbox file', async () => {
    const root = join(dir, 'shop');
    await writeSyntheticInshop({ out: root, items: 8, categories: 2, views: 2, imageSize: 16, seed: 1 });
    rmSync(join(root, BBOX_FILE));
    await expect(openInshopCatalogue({ root, bboxCrop: true })).rejects.toThrow(
      /list_bbox_inshop.txt: file not found; it is needed for bounding-box crops/,
    );
    expect((await openInshopCatalogue({ root })).hasBoxes).toBe(false);
  });
});
