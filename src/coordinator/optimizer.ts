// Applies gradients to the authoritative parameters: Adam (reference: lr 1e-3, x0.995 per epoch)
// and BatchNorm moving statistics. Separate from gradient computation so that the fleet can average
// shard gradients in between.
import * as tf from '@tensorflow/tfjs-core';
import type { ModelState } from '../shared/model/params.js';
import type { OptimizerState } from '../shared/checkpoint-format.js';
import type { OptimizerConfig } from '../shared/optimizer-config.js';

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
    // Always in architecture order: Adam keeps its moments by position, and a resumed run must
    // find them where it left them.
    for (const name of grads.keys())
      if (!this.model.trainable.has(name)) throw new Error(`gradient for unknown parameter ${name}`);
    const byVariable: { name: string; tensor: tf.Tensor }[] = [];
    for (const [name, variable] of this.model.trainable) {
      const g = grads.get(name);
      if (!g) throw new Error(`no gradient for parameter ${name}`);
      if (!tf.util.arraysEqual(variable.shape, g.shape))
        throw new Error(`gradient for ${name} has shape [${g.shape}], parameter is [${variable.shape}]`);
      byVariable.push({ name: variable.name, tensor: g });
    }
    this.optimizer.applyGradients(byVariable);
    for (const [name, value] of bnUpdates) {
      const buffer = this.model.buffers.get(name);
      if (!buffer) throw new Error(`statistics for unknown buffer ${name}`);
      buffer.assign(value);
    }
  }

  /**
   * Adam's state for a checkpoint: iteration count, the running bias-correction products (restoring
   * them from the count alone would round differently) and the moments in architecture order.
   */
  async state(): Promise<OptimizerState> {
    const weights = await this.optimizer.getWeights();
    const acc = this.optimizer as unknown as { accBeta1: tf.Variable; accBeta2: tf.Variable };
    const names = ['iter', 'accBeta1', 'accBeta2', ...weights.slice(1).map((w) => w.name)];
    const shapes = [[1], [1], [1], ...weights.slice(1).map((w) => w.tensor.shape)];
    const values = [
      Float32Array.of((await weights[0].tensor.data())[0]),
      Float32Array.from(await acc.accBeta1.data()),
      Float32Array.from(await acc.accBeta2.data()),
    ];
    for (const w of weights.slice(1)) values.push(Float32Array.from((await w.tensor.data()) as Float32Array));
    weights[0].tensor.dispose();
    return { names, shapes, values };
  }

  /** Restores state() output into this (fresh) optimizer. */
  async restore(s: OptimizerState): Promise<void> {
    const moments = s.values.length - 3;
    if (
      s.names.slice(0, 3).join() !== 'iter,accBeta1,accBeta2' ||
      (moments !== 0 && moments !== 2 * this.model.trainable.size)
    ) {
      throw new Error(
        `optimizer state has ${moments} moment tensors; this model needs ${2 * this.model.trainable.size}`,
      );
    }
    const shapes = [...this.model.trainable.values()].map((v) => v.shape);
    for (let i = 0; i < moments; i++) {
      const want = shapes[i % shapes.length];
      if (!tf.util.arraysEqual(want, s.shapes[3 + i]))
        throw new Error(
          `optimizer moment ${s.names[3 + i]} has shape [${s.shapes[3 + i]}], the parameter is [${want}]`,
        );
    }
    const tensors = [
      { name: 'iter', tensor: tf.scalar(s.values[0][0], 'int32') },
      ...s.values.slice(3).map((v, i) => ({ name: s.names[3 + i], tensor: tf.tensor(v, s.shapes[3 + i]) })),
    ];
    await this.optimizer.setWeights(tensors);
    tf.dispose(tensors.map((t) => t.tensor));
    const acc = this.optimizer as unknown as { accBeta1: tf.Variable; accBeta2: tf.Variable };
    acc.accBeta1.assign(tf.scalar(s.values[1][0]));
    acc.accBeta2.assign(tf.scalar(s.values[2][0]));
  }

  dispose(): void {
    this.optimizer.dispose();
  }
}
