// Class capsules: one transform W shared by all primary capsules, then dynamic routing.
//   input  u     [batch, inCaps, inDim]        (squashed primary capsules)
//   weight W     [inDim, classes * outDim]     (one matrix for every input capsule, as the reference)
//   output v     [batch, classes, outDim]
//
// Because W is shared, the prediction vectors u_hat[b, j, i] = W_j^T u[b, i] never need to exist:
//   s[b, j]   = sum_i c[b, i, j] u_hat[b, j, i]  = W_j^T (sum_i c[b, i, j] u[b, i])
//   a[b, i, j] = <v[b, j], u_hat[b, j, i]>       = <W_j v[b, j], u[b, i]>
// Both are small batched matMuls. The materialised u_hat would be batch*inCaps*classes*outDim
// floats: 1.16 GB for 96 images at 256px (8,192 capsules, 23 classes), beyond wasm's 4 GB heap
// once its gradient and copies are counted. Routing logits are laid out [batch, inCaps, classes]
// because tf.softmax works on the last axis: each input capsule distributes itself over the classes.
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.js';
import { squash } from './squash.js';

export function computeOutputShape(
  inputShape: [number, number, number],
  classes: number,
  outDim: number,
): [number, number, number] {
  return [inputShape[0], classes, outDim];
}

export type ClassCapsulesConfig = Pick<
  ModelConfig,
  'categories' | 'classCapsuleDim' | 'routingIterations' | 'routingRule'
> &
  Partial<Pick<ModelConfig, 'routingPool'>>;

/**
 * Largest block-diagonal transform (elements) built for the per-class products. Above it (thousands
 * of categories) the products run as batched matMuls over classes with transposes around them.
 */
export const BLOCK_DIAGONAL_MAX_ELEMENTS = 1 << 22;

/** 0/1 mask of the diagonal blocks of [classes*inDim, classes*outDim]; uploaded once per shape. */
const blockMaskCache = new Map<string, tf.Tensor2D>();
function blockMask(classes: number, inDim: number, outDim: number): tf.Tensor2D {
  const key = `${tf.getBackend()} ${classes} ${inDim} ${outDim}`;
  let mask = blockMaskCache.get(key);
  if (!mask || mask.isDisposed) {
    const values = new Float32Array(classes * inDim * classes * outDim);
    for (let j = 0; j < classes; j++) {
      for (let i = 0; i < inDim; i++)
        values.fill(
          1,
          (j * inDim + i) * classes * outDim + j * outDim,
          (j * inDim + i) * classes * outDim + (j + 1) * outDim,
        );
    }
    mask = tf.keep(tf.tensor2d(values, [classes * inDim, classes * outDim]));
    blockMaskCache.set(key, mask);
  }
  return mask;
}

/**
 * The per-class products x_j -> W_j^T x_j ([batch, classes, inDim] -> [batch, classes, outDim]) and
 * back (W_j y_j). For the usual category counts as one matMul with the block-diagonal matrix
 * diag(W_1..W_C) (its zeros cost classes x more multiply-adds on a tiny operand, but no transposes:
 * fewer kernel dispatches, which is what a GPU step pays for); beyond BLOCK_DIAGONAL_MAX_ELEMENTS as
 * batched matMuls over classes.
 */
function perClassTransform(
  weight: tf.Tensor2D,
  classes: number,
  inDim: number,
  outDim: number,
  blockDiagonal: boolean,
) {
  if (blockDiagonal) {
    // W is [inDim, classes*outDim]; broadcast down the classes and masked (a broadcast's gradient is
    // one sum; tf.tile's is a slice and an add per tile): [classes*inDim, classes*outDim].
    const masked = tf.mul(
      tf.reshape(blockMask(classes, inDim, outDim), [classes, inDim, classes * outDim]),
      tf.expandDims(weight, 0),
    );
    const diag = tf.reshape(masked, [classes * inDim, classes * outDim]) as tf.Tensor2D;
    return {
      forward: (x: tf.Tensor3D) =>
        tf.reshape(tf.matMul(tf.reshape(x, [x.shape[0], classes * inDim]), diag), [
          x.shape[0],
          classes,
          outDim,
        ]) as tf.Tensor3D,
      backward: (y: tf.Tensor3D) =>
        tf.reshape(tf.matMul(tf.reshape(y, [y.shape[0], classes * outDim]), diag, false, true), [
          y.shape[0],
          classes,
          inDim,
        ]) as tf.Tensor3D,
    };
  }
  const perClass = tf.transpose(tf.reshape(weight, [inDim, classes, outDim]), [1, 0, 2]) as tf.Tensor3D; // [classes, inDim, outDim]
  const byClass = (t: tf.Tensor) => tf.transpose(t, [1, 0, 2]) as tf.Tensor3D; // [batch, classes, d] <-> [classes, batch, d]
  return {
    forward: (x: tf.Tensor3D) => byClass(tf.matMul(byClass(x), perClass)),
    backward: (y: tf.Tensor3D) => byClass(tf.matMul(byClass(y), perClass, false, true)),
  };
}

export function classCapsules(
  u: tf.Tensor3D,
  weight: tf.Tensor2D,
  cfg: ClassCapsulesConfig,
  blockDiagonal?: boolean,
): tf.Tensor3D {
  return tf.tidy(() => {
    const [batch, inCaps, inDim] = u.shape;
    const classes = cfg.categories;
    const outDim = cfg.classCapsuleDim;
    const transform = perClassTransform(
      weight,
      classes,
      inDim,
      outDim,
      blockDiagonal ?? classes * inDim * classes * outDim <= BLOCK_DIAGONAL_MAX_ELEMENTS,
    );
    // tf.fill runs on the device; tf.zeros makes the values on the host and uploads them.
    let logits: tf.Tensor = tf.fill([batch, inCaps, classes], 0);
    let v: tf.Tensor3D | undefined;
    for (let iteration = 0; iteration < cfg.routingIterations; iteration++) {
      const coupling = tf.softmax(logits) as tf.Tensor3D; // [batch, inCaps, classes], over classes
      let pooled: tf.Tensor3D = tf.matMul(coupling, u, true, false); // [batch, classes, inDim]
      if (cfg.routingPool === 'mean') pooled = tf.div(pooled, tf.expandDims(tf.sum(coupling, 1), 2));
      v = squash(transform.forward(pooled)) as tf.Tensor3D; // [batch, classes, outDim]
      if (iteration < cfg.routingIterations - 1) {
        const q = transform.backward(v); // W_j v_j: [batch, classes, inDim]
        const agreement = tf.matMul(u, q, false, true); // [batch, inCaps, classes]
        logits = cfg.routingRule === 'reassign' ? agreement : tf.add(logits, agreement);
      }
    }
    return v!;
  });
}
