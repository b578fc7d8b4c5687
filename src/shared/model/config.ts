// Model hyper-parameters (zod-validated). Defaults follow the TriCapsNet reference
// (../shared/reference/tricapsnet.md): 256x256 input, 23 categories, 16-dim capsules, 3 routings.
import { z } from 'zod';

export const ROUTING_RULES = ['reassign', 'accumulate'] as const;
export const VARIANTS = ['sc', 'rc'] as const;
export const ROUTING_POOLS = ['sum', 'mean'] as const;

export const ModelConfigSchema = z
  .object({
    /** "sc": stacked conv+BN blocks; "rc": residual blocks. */
    variant: z.enum(VARIANTS).default('sc'),
    /** Square input side in pixels; four stride-2 stages need a multiple of 16. */
    imageSize: z.number().int().min(16).max(1024).default(256),
    /** Multiplies every convolution's channel count (1 = the reference). */
    width: z.number().positive().max(8).default(1),
    /** Number of clothing categories = number of class capsules. */
    categories: z.number().int().min(2).max(1000).default(23),
    primaryCapsuleDim: z.number().int().min(2).max(64).default(16),
    classCapsuleDim: z.number().int().min(2).max(64).default(16),
    routingIterations: z.number().int().min(1).max(10).default(3),
    /** "reassign": b = <v, u_hat> (reference code); "accumulate": b += <v, u_hat> (capsule paper). */
    routingRule: z.enum(ROUTING_RULES).default('reassign'),
    /**
     * "sum": s_j = sum_i c_ij u_hat (reference). Its norm grows with the number of primary capsules
     * (8,192 at 256px), so class capsules start saturated (|v| ~ 0.9997 at init, squash gradient ~0).
     * "mean": the same sum divided by sum_i c_ij, which keeps |s_j| independent of the input count.
     */
    routingPool: z.enum(ROUTING_POOLS).default('sum'),
    /** SpatialDropout rate after the feature blocks (channel-wise). */
    dropout: z.number().min(0).max(0.95).default(0.3),
    /** Keras defaults carried by the reference: LeakyReLU alpha 0.3, BN epsilon 1e-3, momentum 0.99. */
    leakyAlpha: z.number().min(0).max(1).default(0.3),
    bnEpsilon: z.number().positive().default(1e-3),
    bnMomentum: z.number().min(0).max(1).default(0.99),
  })
  .superRefine((c, ctx) => {
    if (c.imageSize % 16 !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['imageSize'],
        message: `image size ${c.imageSize} is not a multiple of 16 (four stride-2 stages); try ${Math.max(16, Math.round(c.imageSize / 16) * 16)}`,
      });
    }
  });

export type ModelConfig = z.infer<typeof ModelConfigSchema>;
export type ModelConfigInput = z.input<typeof ModelConfigSchema>;

export function modelConfig(input: ModelConfigInput = {}): ModelConfig {
  return ModelConfigSchema.parse(input);
}
