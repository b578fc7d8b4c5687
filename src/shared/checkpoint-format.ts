// The weights part of a checkpoint (coordinator/checkpoint.ts adds optimizer state, run state and the
// manifest beside it): a directory with
//   model.json   { format, modelConfig, step, categories, weightsManifest } (tfjs weights-manifest shape)
//   weights.bin  every parameter and BatchNorm buffer as little-endian float32, in manifest order
// written to a temporary directory and renamed into place, so a reader never sees half of one.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { UsageError } from './errors.js';
import { isStepDirName } from './paths.js';
import { ModelConfigSchema, type ModelConfig } from './model/config.js';

export const CHECKPOINT_FORMAT = 'tricaps-weights-v1';

const ModelJsonSchema = z.object({
  format: z.literal(CHECKPOINT_FORMAT),
  modelConfig: ModelConfigSchema,
  step: z.number().int().min(0),
  categories: z.array(z.string()),
  weightsManifest: z
    .array(
      z.object({
        paths: z.array(z.string()),
        weights: z.array(z.object({ name: z.string(), shape: z.array(z.number().int()), dtype: z.literal('float32') })),
      }),
    )
    .length(1),
});

export interface SavedWeights {
  modelConfig: ModelConfig;
  step: number;
  /** Category names, index = capsule. */
  categories: string[];
  values: Map<string, Float32Array>;
  shapes: Map<string, number[]>;
}

/** Writes model.json and weights.bin into an existing directory. */
export function writeWeightsFiles(dir: string, w: SavedWeights): void {
  const names = [...w.values.keys()];
  const total = names.reduce((s, n) => s + w.values.get(n)!.length, 0);
  const bin = new Float32Array(total); // little-endian on every host we run on (as the format says)
  let offset = 0;
  for (const n of names) {
    bin.set(w.values.get(n)!, offset);
    offset += w.values.get(n)!.length;
  }
  writeFileSync(join(dir, 'weights.bin'), new Uint8Array(bin.buffer));
  const manifest = {
    paths: ['weights.bin'],
    weights: names.map((name) => ({ name, shape: w.shapes.get(name)!, dtype: 'float32' as const })),
  };
  writeFileSync(
    join(dir, 'model.json'),
    JSON.stringify(
      {
        format: CHECKPOINT_FORMAT,
        modelConfig: w.modelConfig,
        step: w.step,
        categories: w.categories,
        weightsManifest: [manifest],
      },
      null,
      1,
    ),
  );
}

export function loadWeights(dir: string): SavedWeights {
  const jsonPath = join(dir, 'model.json');
  if (!existsSync(jsonPath))
    throw new UsageError(`${dir}: no model.json; pass a directory written by \`tricaps train --checkpoint-dir\``);
  let parsed: z.infer<typeof ModelJsonSchema>;
  try {
    parsed = ModelJsonSchema.parse(JSON.parse(readFileSync(jsonPath, 'utf8')));
  } catch (err) {
    throw new UsageError(
      `${jsonPath}: not a tricaps checkpoint (${err instanceof z.ZodError ? err.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') : (err as Error).message})`,
    );
  }
  const manifest = parsed.weightsManifest[0];
  const binPath = join(dir, manifest.paths[0]);
  if (!existsSync(binPath)) throw new UsageError(`${binPath}: missing weights file`);
  const bin = readFileSync(binPath);
  const expected = manifest.weights.reduce((s, w) => s + w.shape.reduce((a, b) => a * b, 1), 0) * 4;
  if (bin.length !== expected)
    throw new UsageError(
      `${binPath}: ${bin.length} bytes, the manifest needs ${expected}; the checkpoint is truncated or corrupt`,
    );
  const values = new Map<string, Float32Array>();
  const shapes = new Map<string, number[]>();
  let offset = 0;
  for (const w of manifest.weights) {
    const n = w.shape.reduce((a, b) => a * b, 1);
    const arr = new Float32Array(n);
    for (let i = 0; i < n; i++, offset += 4) arr[i] = bin.readFloatLE(offset);
    values.set(w.name, arr);
    shapes.set(w.name, w.shape);
  }
  return { modelConfig: parsed.modelConfig, step: parsed.step, categories: parsed.categories, values, shapes };
}

/** Directory name of a step's checkpoint under a checkpoint root. */
export function stepDirName(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

/** A checkpoint directory itself, or the newest step-* directory under a checkpoint root. */
export function resolveCheckpoint(path: string): string {
  if (existsSync(join(path, 'model.json'))) return path;
  if (!existsSync(path)) throw new UsageError(`${path}: no such checkpoint directory`);
  // A training run's checkpoint root names its newest complete checkpoint in `latest`.
  const latest = join(path, 'latest');
  if (existsSync(latest)) {
    const name = readFileSync(latest, 'utf8').trim();
    const named = join(path, name);
    if (isStepDirName(name) && existsSync(join(named, 'model.json'))) return named;
  }
  // Fixed-width names: their string order is their step order.
  const steps = readdirSync(path)
    .filter((d) => isStepDirName(d) && existsSync(join(path, d, 'model.json')))
    .sort();
  if (!steps.length)
    throw new UsageError(
      `${path}: holds no checkpoint (no model.json, no step-* directories); train with --checkpoint-dir ${path}`,
    );
  return join(path, steps[steps.length - 1]);
}

export interface OptimizerState {
  /** Adam's variables in order (iteration count, first and second moments), as float32. */
  names: string[];
  shapes: number[][];
  values: Float32Array[];
}
