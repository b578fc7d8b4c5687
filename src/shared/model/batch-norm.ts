// BatchNorm over NHWC activations (statistics per channel, over batch and space).
//   x [N, H, W, C], gamma/beta/mean/variance [C] -> y [N, H, W, C]
// Training mode has a hand-written backward pass: autodiff through tf.moments backpropagates
// through Mean's gradient, which tiles/fills in JavaScript on wasm and dominated the step there.
import * as tf from '@tensorflow/tfjs-core';

export interface BatchNormTrainingResult {
  y: tf.Tensor4D;
  /** Batch mean and (biased) variance [C]: kept tensors, the caller disposes them. */
  mean: tf.Tensor1D;
  variance: tf.Tensor1D;
}

/** Fused kernels of the webgpu engine (engine/webgpu-kernels.ts), when the current engine has them. */
const fusedKernels = () => tf.getKernel('TricapsBnApply', tf.getBackend()) !== undefined;
const run = (kernel: string, inputs: Record<string, tf.Tensor>) =>
  tf.engine().runKernel(kernel, inputs as tf.NamedTensorMap) as tf.Tensor;

export function batchNormTraining(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  epsilon: number,
): BatchNormTrainingResult {
  return fusedKernels() && x.dtype === 'float32'
    ? batchNormTrainingFused(x, gamma, beta, epsilon)
    : batchNormTrainingOps(x, gamma, beta, epsilon);
}

/** The same computation with the normalisation and dx each one fused pass (x-hat never stored). */
function batchNormTrainingFused(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  epsilon: number,
): BatchNormTrainingResult {
  let stats: [tf.Tensor1D, tf.Tensor1D] | undefined;
  const op = tf.customGrad(((xIn: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const { mean, variance } = tf.moments(xIn, [0, 1, 2]);
    const rstd = tf.rsqrt(tf.add(variance, epsilon));
    stats = [tf.keep(mean) as tf.Tensor1D, tf.keep(variance) as tf.Tensor1D];
    save([xIn, mean, rstd, g]);
    return {
      value: run('TricapsBnApply', { x: xIn, mean, rstd, gamma: g, beta: b }),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xs, m, rs, gs] = saved;
        const dbeta = tf.sum(dy, [0, 1, 2]);
        const dgamma = tf.sum(run('TricapsBnDyXhat', { dy, x: xs, mean: m, rstd: rs }), [0, 1, 2]);
        return [run('TricapsBnGrad', { dy, x: xs, mean: m, rstd: rs, gamma: gs, dbeta, dgamma }), dgamma, dbeta];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const y = op(x, gamma, beta) as tf.Tensor4D;
  return { y, mean: stats![0], variance: stats![1] };
}

/** BatchNorm training with plain tfjs ops (every engine; the reference for the fused kernels). */
function batchNormTrainingOps(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  epsilon: number,
): BatchNormTrainingResult {
  let stats: [tf.Tensor1D, tf.Tensor1D] | undefined;
  const op = tf.customGrad(((xIn: tf.Tensor, g: tf.Tensor, b: tf.Tensor, save: tf.GradSaveFunc) => {
    const { mean, variance } = tf.moments(xIn, [0, 1, 2]);
    const rstd = tf.rsqrt(tf.add(variance, epsilon));
    const xhat = tf.mul(tf.sub(xIn, mean), rstd);
    stats = [tf.keep(mean) as tf.Tensor1D, tf.keep(variance) as tf.Tensor1D];
    save([xhat, g, rstd]);
    return {
      value: tf.add(tf.mul(xhat, g), b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [xh, gs, rs] = saved;
        const count = xh.size / (xh.shape[3] as number);
        const dbeta = tf.sum(dy, [0, 1, 2]);
        const dgamma = tf.sum(tf.mul(dy, xh), [0, 1, 2]);
        // dx = gamma * rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
        const centered = tf.sub(tf.sub(dy, tf.div(dbeta, count)), tf.mul(xh, tf.div(dgamma, count)));
        return [tf.mul(centered, tf.mul(gs, rs)), dgamma, dbeta];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const y = op(x, gamma, beta) as tf.Tensor4D;
  return { y, mean: stats![0], variance: stats![1] };
}

export function batchNormInference(
  x: tf.Tensor4D,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  movingMean: tf.Tensor,
  movingVariance: tf.Tensor,
  epsilon: number,
): tf.Tensor4D {
  return tf.tidy(() => {
    const scale = tf.mul(gamma, tf.rsqrt(tf.add(movingVariance, epsilon)));
    return tf.add(tf.mul(x, scale), tf.sub(beta, tf.mul(movingMean, scale))) as tf.Tensor4D;
  });
}

/**
 * The moving statistics after one training batch (Keras 2.x, the reference): the moving variance
 * takes the batch variance made unbiased as Keras does, var * n / (n - (1 + epsilon)), n = values per
 * channel (batch x height x width); PyTorch uses n / (n - 1). On small feature maps (2x2 at RC 32px)
 * the biased variance made evaluation outputs differ by ~1e-2 relative.
 */
export function movingStatistics(
  batch: { mean: tf.Tensor; variance: tf.Tensor; count: number },
  moving: { mean: tf.Tensor; variance: tf.Tensor },
  momentum: number,
  epsilon: number,
): { mean: tf.Tensor; variance: tf.Tensor } {
  return tf.tidy(() => {
    const unbiased = batch.count > 1 + epsilon ? batch.count / (batch.count - (1 + epsilon)) : 1;
    return {
      mean: tf.add(tf.mul(moving.mean, momentum), tf.mul(batch.mean, 1 - momentum)),
      variance: tf.add(tf.mul(moving.variance, momentum), tf.mul(batch.variance, (1 - momentum) * unbiased)),
    };
  });
}
