// The TriCapsNet forward pass (SC and RC variants) over a ModelState.
//   input  images   [batch, S, S, 3] in [0, 1]
//   output capsules [batch, categories, classCapsuleDim]
// In training mode BatchNorm uses batch statistics and returns the updated moving statistics as
// `bnUpdates` (kept tensors, owned by the caller) so a coordinator can average them across workers.
import * as tf from '@tensorflow/tfjs-core';
import type { ConvFn } from '../engine/engine.js';
import { stockConv } from '../engine/engine.js';
import type { ActivationKind, BatchNormSpec, ConvSpec } from './architecture.js';
import { batchNormInference, batchNormTraining, movingStatistics } from './batch-norm.js';
import { classCapsules } from './class-capsules.js';
import type { ModelState } from './params.js';
import { squash } from './squash.js';

export interface ForwardOptions {
  training: boolean;
  conv?: ConvFn;
  /** Seed for spatial dropout masks (training only); vary it per step and worker. */
  dropoutSeed?: number;
}

export interface ForwardResult {
  capsules: tf.Tensor3D;
  /** New moving mean/variance per BN buffer name; empty when not training. Caller disposes. */
  bnUpdates: Map<string, tf.Tensor>;
}

export function forward(state: ModelState, images: tf.Tensor4D, opts: ForwardOptions): ForwardResult {
  const cfg = state.arch.config;
  const conv = opts.conv ?? stockConv;
  const bnUpdates = new Map<string, tf.Tensor>();
  let dropoutCounter = 0;
  const p = (name: string): tf.Tensor => {
    const v = state.trainable.get(name) ?? state.buffers.get(name);
    if (!v) throw new Error(`missing parameter ${name}`);
    return v;
  };

  const convLayer = (x: tf.Tensor4D, spec: ConvSpec, isInput = false): tf.Tensor4D =>
    tf.add(
      conv(x, p(`${spec.name}/kernel`) as tf.Tensor4D, {
        stride: spec.stride,
        padding: spec.padding,
        inputGrad: !isInput,
      }),
      p(`${spec.name}/bias`),
    );

  const batchNorm = (x: tf.Tensor4D, spec: BatchNormSpec): tf.Tensor4D => {
    const gamma = p(`${spec.name}/gamma`);
    const beta = p(`${spec.name}/beta`);
    const movingMean = p(`${spec.name}/moving_mean`);
    const movingVariance = p(`${spec.name}/moving_variance`);
    if (!opts.training) return batchNormInference(x, gamma, beta, movingMean, movingVariance, cfg.bnEpsilon);
    const { y, mean, variance } = batchNormTraining(x, gamma, beta, cfg.bnEpsilon);
    const count = x.size / x.shape[3];
    const next = movingStatistics(
      { mean, variance, count },
      { mean: movingMean, variance: movingVariance },
      cfg.bnMomentum,
      cfg.bnEpsilon,
    );
    // Kept: they outlive this tidy scope; the caller applies (or averages) and disposes them.
    bnUpdates.set(`${spec.name}/moving_mean`, tf.keep(next.mean));
    bnUpdates.set(`${spec.name}/moving_variance`, tf.keep(next.variance));
    tf.dispose([mean, variance]);
    return y;
  };

  const activate = (x: tf.Tensor4D, kind: ActivationKind): tf.Tensor4D =>
    kind === 'relu' ? tf.relu(x) : tf.leakyRelu(x, cfg.leakyAlpha);

  /** SpatialDropout2D: one keep/drop decision per (image, channel). */
  const spatialDropout = (x: tf.Tensor4D): tf.Tensor4D => {
    if (!opts.training || cfg.dropout === 0) return x;
    const [b, , , c] = x.shape;
    const seed = (opts.dropoutSeed ?? 0) * 7919 + dropoutCounter++;
    const keep = tf.cast(
      tf.greaterEqual(tf.randomUniform([b, 1, 1, c], 0, 1, 'float32', seed), cfg.dropout),
      'float32',
    );
    return tf.mul(x, tf.div(keep, 1 - cfg.dropout)) as tf.Tensor4D;
  };

  const result = tf.tidy(() => {
    let x: tf.Tensor4D = images;
    let first = true;
    let capsules: tf.Tensor3D | undefined;
    let primary: tf.Tensor3D | undefined;
    for (const layer of state.arch.layers) {
      if (layer.kind === 'conv_block') {
        x = spatialDropout(activate(batchNorm(convLayer(x, layer.conv, first), layer.bn), layer.activation));
      } else if (layer.kind === 'residual_block') {
        const main = batchNorm(
          convLayer(activate(batchNorm(convLayer(x, layer.conv1), layer.bn1), 'leaky_relu'), layer.conv2),
          layer.bn2,
        );
        const shortcut = batchNorm(convLayer(x, layer.projection), layer.projectionBn);
        x = activate(tf.add(main, shortcut), 'leaky_relu');
        if (layer.dropout) x = spatialDropout(x);
      } else if (layer.kind === 'primary_capsules') {
        if (layer.conv) x = convLayer(x, layer.conv);
        primary = squash(tf.reshape(x, [x.shape[0], -1, layer.dim])) as tf.Tensor3D;
      } else {
        capsules = classCapsules(primary!, p(`${layer.name}/W`) as tf.Tensor2D, cfg);
      }
      first = false;
    }
    return capsules!;
  });
  return { capsules: result, bnUpdates };
}
