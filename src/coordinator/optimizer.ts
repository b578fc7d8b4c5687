// Applies gradients to the authoritative parameters: Adam (reference: lr 1e-3, x0.995 per epoch)
// and BatchNorm moving statistics. Separate from gradient computation so that the fleet can average
// shard gradients in between.
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import type { ModelState } from '../shared/model/params.js';

export const OptimizerConfigSchema = z.object({
  learningRate: z.number().positive().max(10).default(1e-3),
  /** Multiplies the learning rate once per epoch (reference: 0.995). */
  lrDecayPerEpoch: z.number().positive().max(1).default(0.995),
  beta1: z.number().min(0).max(1).default(0.9),
  beta2: z.number().min(0).max(1).default(0.999),
  epsilon: z.number().positive().default(1e-7),
});
export type OptimizerConfig = z.infer<typeof OptimizerConfigSchema>;

export class ParameterUpdater {
  private readonly optimizer: tf.AdamOptimizer;

  constructor(
    private readonly model: ModelState,
    private readonly cfg: OptimizerConfig,
  ) {
    this.optimizer = tf.train.adam(cfg.learningRate, cfg.beta1, cfg.beta2, cfg.epsilon);
  }

  learningRateAt(epoch: number): number {
    return this.cfg.learningRate * Math.pow(this.cfg.lrDecayPerEpoch, epoch);
  }

  /** One optimizer step. Gradients and BN statistics are read, not disposed. */
  apply(grads: Map<string, tf.Tensor>, bnUpdates: Map<string, tf.Tensor>, epoch: number): void {
    (this.optimizer as unknown as { learningRate: number }).learningRate = this.learningRateAt(epoch);
    const byVariable: { name: string; tensor: tf.Tensor }[] = [];
    for (const [name, g] of grads) {
      const variable = this.model.trainable.get(name);
      if (!variable) throw new Error(`gradient for unknown parameter ${name}`);
      if (!tf.util.arraysEqual(variable.shape, g.shape)) throw new Error(`gradient for ${name} has shape [${g.shape}], parameter is [${variable.shape}]`);
      byVariable.push({ name: variable.name, tensor: g });
    }
    this.optimizer.applyGradients(byVariable);
    for (const [name, value] of bnUpdates) {
      const buffer = this.model.buffers.get(name);
      if (!buffer) throw new Error(`statistics for unknown buffer ${name}`);
      buffer.assign(value);
    }
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
