// What a coordinator tells each worker at registration (RegisterResponse.config_json): the training
// configuration, which catalogue it must see, and the run's shard count. Validated by the worker
// with the same schemas the coordinator used.
import { z } from 'zod';
import { TrainConfigSchema } from './train-config.js';

export const FleetJobSchema = z.object({
  train: TrainConfigSchema,
  catalogue: z.object({
    name: z.string(),
    images: z.number().int().min(0),
    categories: z.number().int().min(1),
    /** Digest of every image's item, category and split, in order (open-catalogue.ts). */
    labels: z.string(),
  }),
  shards: z.number().int().min(1),
});
export type FleetJob = z.infer<typeof FleetJobSchema>;
