// Applies gradients to the authoritative parameters: Adam (reference: lr 1e-3, x0.995 per epoch)
// and BatchNorm moving statistics. Separate from gradient computation so that the fleet can average
// shard gradients in between.
//
// Two modes with one checkpoint format and the same numbers (host-adam.ts is tfjs's Adam op for op):
//   - device (default): tfjs's AdamOptimizer on the engine, for a loop whose gradients are tensors;
//   - host: the coordinator's step, whose gradients arrive on the host. Weights, moments and
//     statistics live in host arrays, one fused pass updates them, the model's variables are written
//     once per step, and the weights vector is at hand for the fleet (no read back from the engine).
import * as tf from '@tensorflow/tfjs-core';
import type { ModelState } from '../shared/model/params.js';
import type { OptimizerState } from '../shared/checkpoint-format.js';
import type { OptimizerConfig } from '../shared/optimizer-config.js';
import { nextAccumulators } from './host-adam.js';
import { AdamArrays } from './kernels/adam-kernel.js';
import { tensorFromHost } from '../shared/model/params.js';

interface HostState {
  /** Weights (parameters, then buffers, in architecture order), moments, and the gradient's staging. */
  arrays: AdamArrays;
  iterations: number;
  accBeta1: number;
  accBeta2: number;
  /** Offset of each parameter and buffer in `weights`. */
  offsets: Map<string, number>;
}

export class ParameterUpdater {
  private readonly optimizer: tf.AdamOptimizer | undefined;
  private host: HostState | undefined;
  private restored: OptimizerState | undefined;

  constructor(
    private readonly model: ModelState,
    private readonly cfg: OptimizerConfig,
    readonly mode: 'device' | 'host' = 'device',
  ) {
    if (mode === 'device') this.optimizer = tf.train.adam(cfg.learningRate, cfg.beta1, cfg.beta2, cfg.epsilon);
  }

  learningRateAt(epoch: number): number {
    return this.cfg.learningRate * Math.pow(this.cfg.lrDecayPerEpoch, epoch);
  }

  /** One optimizer step (device mode). Gradients and BN statistics are read, not disposed. */
  apply(grads: Map<string, tf.Tensor>, bnUpdates: Map<string, tf.Tensor>, epoch: number): void {
    if (!this.optimizer)
      throw new Error('ParameterUpdater: apply() is the device mode; this one keeps Adam on the host');
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
   * One optimizer step from host arrays (the averaged gradient and the new statistics, read, not
   * kept). Host mode: one fused pass, then the model's variables are written. Device mode: the
   * arrays are uploaded and apply() runs.
   */
  async applyHost(grads: Map<string, Float32Array>, stats: Map<string, Float32Array>, epoch: number): Promise<void> {
    for (const name of grads.keys())
      if (!this.model.trainable.has(name)) throw new Error(`gradient for unknown parameter ${name}`);
    for (const name of stats.keys())
      if (!this.model.buffers.has(name)) throw new Error(`statistics for unknown buffer ${name}`);
    for (const [name, variable] of this.model.trainable) {
      const g = grads.get(name);
      if (!g) throw new Error(`no gradient for parameter ${name}`);
      if (g.length !== variable.size)
        throw new Error(
          `gradient for ${name} has ${g.length} values, parameter [${variable.shape}] has ${variable.size}`,
        );
    }
    if (!this.optimizer) return this.applyOnHost(grads, stats, epoch);
    const gradTensors = new Map([...grads].map(([n, g]) => [n, tf.tensor(g, this.model.trainable.get(n)!.shape)]));
    // The buffers are assigned these tensors, which a backend may keep the arrays of.
    const statTensors = new Map([...stats].map(([n, s]) => [n, tensorFromHost(s, this.model.buffers.get(n)!.shape)]));
    try {
      this.apply(gradTensors, statTensors, epoch);
    } finally {
      tf.dispose([...gradTensors.values(), ...statTensors.values()]);
    }
  }

  private async applyOnHost(
    grads: Map<string, Float32Array>,
    stats: Map<string, Float32Array>,
    epoch: number,
  ): Promise<void> {
    const h = await this.hostState();
    const scalars = {
      learningRate: this.learningRateAt(epoch),
      beta1: this.cfg.beta1,
      beta2: this.cfg.beta2,
      epsilon: this.cfg.epsilon,
      accBeta1: h.accBeta1,
      accBeta2: h.accBeta2,
    };
    const { arrays } = h;
    for (const [name, st] of stats)
      if (st.length !== this.model.buffers.get(name)!.size)
        throw new Error(
          `statistics for ${name} have ${st.length} values, the buffer ${this.model.buffers.get(name)!.size}`,
        );
    for (const [name, g] of grads) arrays.gradient.set(g, h.offsets.get(name)!);
    arrays.step(scalars);
    for (const [name, st] of stats) arrays.weights.set(st, h.offsets.get(name)!);
    Object.assign(h, nextAccumulators(scalars));
    h.iterations += 1;
    // The variables follow (evaluation, checkpoints and in-process workers read them).
    for (const [name, variable] of [...this.model.trainable, ...this.model.buffers]) {
      if (!grads.has(name) && !stats.has(name)) continue;
      const at = h.offsets.get(name)!;
      const t = tensorFromHost(arrays.weights.subarray(at, at + variable.size), variable.shape);
      variable.assign(t);
      t.dispose();
    }
  }

  /**
   * Host mode: the weights vector (parameters, then buffers) as the last step left it, for
   * publishing to the fleet; the next step changes it in place (copy what must outlive it).
   * Undefined in device mode (read the model instead).
   */
  async weightsVector(): Promise<Float32Array | undefined> {
    if (this.optimizer) return undefined;
    return (await this.hostState()).arrays.weights;
  }

  /** The host state, made on first use from the model's variables (and a restored checkpoint). */
  private async hostState(): Promise<HostState> {
    if (this.host) return this.host;
    const entries = [...this.model.trainable, ...this.model.buffers];
    const offsets = new Map<string, number>();
    let at = 0;
    for (const [name, v] of entries) {
      offsets.set(name, at);
      at += v.size;
    }
    let trainable = 0;
    for (const v of this.model.trainable.values()) trainable += v.size;
    const arrays = new AdamArrays(at, trainable);
    const flat = tf.tidy(() => tf.concat(entries.map(([, v]) => tf.reshape(v, [-1]))));
    arrays.weights.set((await flat.data()) as Float32Array);
    flat.dispose();
    const h: HostState = {
      arrays,
      iterations: 0,
      accBeta1: Math.fround(this.cfg.beta1),
      accBeta2: Math.fround(this.cfg.beta2),
      offsets,
    };
    const s = this.restored;
    if (s) {
      h.iterations = s.values[0][0];
      h.accBeta1 = s.values[1][0];
      h.accBeta2 = s.values[2][0];
      const moments = s.values.slice(3);
      const count = this.model.trainable.size;
      if (moments.length) {
        let offset = 0;
        [...this.model.trainable.values()].forEach((v, i) => {
          arrays.m.set(moments[i], offset);
          arrays.v.set(moments[count + i], offset);
          offset += v.size;
        });
      }
    }
    this.host = h;
    return h;
  }

  /**
   * Adam's state for a checkpoint: iteration count, the running bias-correction products (restoring
   * them from the count alone would round differently) and the moments in architecture order.
   */
  async state(): Promise<OptimizerState> {
    if (!this.optimizer) return this.hostStateForCheckpoint();
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

  /** The host mode's state in the device mode's layout (tfjs names: "<variable>/m", "<variable>/v"). */
  private async hostStateForCheckpoint(): Promise<OptimizerState> {
    const h = await this.hostState();
    const variables = [...this.model.trainable.values()];
    const moments = (which: Float32Array, suffix: string) => {
      let offset = 0;
      return variables.map((v) => {
        const values = which.slice(offset, offset + v.size);
        offset += v.size;
        return { name: `${v.name}/${suffix}`, shape: v.shape, values };
      });
    };
    const all = [...moments(h.arrays.m, 'm'), ...moments(h.arrays.v, 'v')];
    return {
      names: ['iter', 'accBeta1', 'accBeta2', ...all.map((x) => x.name)],
      shapes: [[1], [1], [1], ...all.map((x) => x.shape)],
      values: [
        Float32Array.of(h.iterations),
        Float32Array.of(h.accBeta1),
        Float32Array.of(h.accBeta2),
        ...all.map((x) => x.values),
      ],
    };
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
    if (!this.optimizer) {
      if (this.host) throw new Error('ParameterUpdater: restore() after the first step');
      this.restored = s;
      return;
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
    this.optimizer?.dispose();
    this.host = undefined;
  }
}
