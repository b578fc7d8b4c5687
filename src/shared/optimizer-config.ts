// The optimizer's settings (Adam, reference: lr 1e-3, x0.995 per epoch), validated: part of the
// training configuration that every process reads; the optimizer itself is the coordinator's.
import { z } from 'zod';

export const OptimizerConfigSchema = z.object({
  learningRate: z.number().positive().max(10).default(1e-3),
  /** Multiplies the learning rate once per epoch (reference: 0.995). */
  lrDecayPerEpoch: z.number().positive().max(1).default(0.995),
  beta1: z.number().min(0).max(1).default(0.9),
  beta2: z.number().min(0).max(1).default(0.999),
  epsilon: z.number().positive().default(1e-7),
});
export type OptimizerConfig = z.infer<typeof OptimizerConfigSchema>;
