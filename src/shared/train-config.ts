// The training job's configuration: one zod schema nesting each component's own (model, optimizer,
// data, loss), validated once at the edge (CLI flags or a file) and passed down as plain data.
import { z } from 'zod';
import { OptimizerConfigSchema } from './optimizer-config.js';
import { ENGINE_NAMES } from './engine/engine.js';
import { ModelConfigSchema } from './model/config.js';
import { MINING_STRATEGIES } from './model/mining.js';
import { MASK_MODES } from './model/embedding.js';
import { AugmentConfigSchema } from './data/augment.js';

export const DataConfigSchema = z.object({
  /** An In-shop catalogue on disk; without it, the built-in synthetic catalogue (options below). */
  root: z.string().min(1).optional(),
  onBadImage: z.enum(['fail', 'skip']).default('fail'),
  bboxCrop: z.boolean().default(false),
  items: z.number().int().min(4).max(100_000).default(240),
  views: z.number().int().min(2).max(32).default(4),
  categories: z.number().int().min(2).max(23).default(6),
  seed: z.number().int().default(7),
});

export const TrainConfigSchema = z
  .object({
    model: ModelConfigSchema.default(ModelConfigSchema.parse({})),
    optimizer: OptimizerConfigSchema.default(OptimizerConfigSchema.parse({})),
    data: DataConfigSchema.default(DataConfigSchema.parse({})),
    augment: AugmentConfigSchema.default(AugmentConfigSchema.parse({})),
    engine: z.enum(ENGINE_NAMES).default('auto'),
    /** 0 = train in this process; >0 arrives with the coordinator. */
    workers: z.number().int().min(0).max(256).default(0),
    steps: z.number().int().min(0).default(100),
    /** Also stop after this many passes over the train items (whichever of steps/epochs ends first). */
    epochs: z.number().int().min(1).optional(),
    /** Stop early (still evaluating) once this much wall time has passed. 0 = no limit. */
    maxMinutes: z.number().min(0).default(0),
    /** Triplets per step; a PK batch holds 3 * batchTriplets images. */
    batchTriplets: z.number().int().min(2).max(4096).default(16),
    imagesPerItem: z.number().int().min(2).max(64).default(3),
    /** The reference samples random triplets; batch-hard collapses early in short runs. */
    mining: z.enum(MINING_STRATEGIES).default('random'),
    margin: z.number().positive().default(2.0),
    marginLossWeight: z.number().min(0).default(0),
    /** Capsule masks to report retrieval for; the first is the headline. */
    evalMasks: z.array(z.enum(MASK_MODES)).min(1).default(['predicted', 'oracle']),
    evalBatch: z.number().int().min(1).default(64),
    seed: z.number().int().default(1),
    /** Where the final weights go (step-NNNNNNNN/ below it); none when absent. */
    checkpointDir: z.string().min(1).optional(),
  })
  .superRefine((c, ctx) => {
    if ((3 * c.batchTriplets) % c.imagesPerItem !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['batchTriplets'],
        message: `a batch of ${c.batchTriplets} triplets has ${3 * c.batchTriplets} images, not a whole number of items with ${c.imagesPerItem} images each; change --batch-triplets or --images-per-item`,
      });
    }
  });

export type TrainConfig = z.infer<typeof TrainConfigSchema>;
export type TrainConfigInput = z.input<typeof TrainConfigSchema>;

/** Steps the run will take given the steps per epoch. */
export function plannedSteps(cfg: Pick<TrainConfig, 'steps' | 'epochs'>, perEpoch: number): number {
  return cfg.epochs === undefined ? cfg.steps : Math.min(cfg.steps, cfg.epochs * perEpoch);
}

/** Items per PK batch. */
export function itemsPerBatch(cfg: TrainConfig): number {
  return (3 * cfg.batchTriplets) / cfg.imagesPerItem;
}
