// Class capsules: a transform shared by all primary capsules, then dynamic routing.
//   input  u     [batch, inCaps, inDim]        (squashed primary capsules)
//   weight W     [inDim, classes * outDim]     (one matrix for every input capsule, as the reference)
//   output v     [batch, classes, outDim]
// Routing logits are laid out [batch, inCaps, classes] because tf.softmax works on the last axis:
// each input capsule distributes itself over the output capsules.
import * as tf from '@tensorflow/tfjs-core';
import type { ModelConfig } from './config.js';
import { squash } from './squash.js';

export function computeOutputShape(inputShape: [number, number, number], classes: number, outDim: number): [number, number, number] {
  return [inputShape[0], classes, outDim];
}

/**
 * u_hat[b, j, i, :] = u[b, i, :] @ W_j, laid out [batch * classes, inCaps, outDim] for batched matMuls.
 * Its weight gradient uses an explicit transpose: tfjs-wasm's transposed matMul runs at a tenth of
 * its plain one.
 */
function predictionVectors(u: tf.Tensor3D, weight: tf.Tensor2D, classes: number, outDim: number): tf.Tensor3D {
  const [batch, inCaps, inDim] = u.shape;
  const transform = tf.customGrad(((uIn: tf.Tensor, wIn: tf.Tensor, save: tf.GradSaveFunc) => {
    const u2 = tf.reshape(uIn, [batch * inCaps, inDim]) as tf.Tensor2D;
    save([u2, wIn]);
    const value = tf.matMul(u2, wIn as tf.Tensor2D); // [batch*inCaps, classes*outDim]
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [us, ws] = saved as [tf.Tensor2D, tf.Tensor2D];
        const du = tf.reshape(tf.matMul(dy as tf.Tensor2D, tf.transpose(ws)), uIn.shape);
        const dw = tf.matMul(tf.transpose(us), dy as tf.Tensor2D);
        return [du, dw];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad>[0]);
  const flat = transform(u, weight);
  const hat = tf.transpose(tf.reshape(flat, [batch, inCaps, classes, outDim]), [0, 2, 1, 3]);
  return tf.reshape(hat, [batch * classes, inCaps, outDim]) as tf.Tensor3D;
}

/**
 * s[b] = c[b] @ u[b]: c [n, 1, caps], u [n, caps, dim] -> [n, 1, dim]. Gradients without transposed
 * matMuls: du is the outer product c^T dS as a broadcast multiply (wasm's transposed matMul is slow).
 */
const weightedSum = tf.customGrad(((c: tf.Tensor, u: tf.Tensor, save: tf.GradSaveFunc) => {
  save([c, u]);
  return {
    value: tf.matMul(c as tf.Tensor3D, u as tf.Tensor3D),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [cs, us] = saved as [tf.Tensor3D, tf.Tensor3D];
      const [n, , caps] = cs.shape;
      return [tf.matMul(dy as tf.Tensor3D, us, false, true), tf.mul(tf.reshape(cs, [n, caps, 1]), dy)];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]);

/** a[b] = u[b] @ v[b]: u [n, caps, dim], v [n, dim, 1] -> [n, caps, 1] (agreement), same care. */
const agreementProduct = tf.customGrad(((u: tf.Tensor, v: tf.Tensor, save: tf.GradSaveFunc) => {
  save([u, v]);
  return {
    value: tf.matMul(u as tf.Tensor3D, v as tf.Tensor3D),
    gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
      const [us, vs] = saved as [tf.Tensor3D, tf.Tensor3D];
      const [n, caps, dim] = us.shape;
      const du = tf.mul(dy, tf.reshape(vs, [n, 1, dim]));
      const dv = tf.reshape(tf.matMul(tf.reshape(dy, [n, 1, caps]) as tf.Tensor3D, us), [n, dim, 1]);
      return [du, dv];
    },
  };
}) as unknown as Parameters<typeof tf.customGrad>[0]);

export function classCapsules(
  u: tf.Tensor3D,
  weight: tf.Tensor2D,
  cfg: Pick<ModelConfig, 'categories' | 'classCapsuleDim' | 'routingIterations' | 'routingRule'> & Partial<Pick<ModelConfig, 'routingPool'>>,
): tf.Tensor3D {
  return tf.tidy(() => {
    const [batch, inCaps] = u.shape;
    const classes = cfg.categories;
    const outDim = cfg.classCapsuleDim;
    const uHat = predictionVectors(u, weight, classes, outDim);
    let logits: tf.Tensor = tf.zeros([batch, inCaps, classes]);
    let v: tf.Tensor3D | undefined;
    for (let iteration = 0; iteration < cfg.routingIterations; iteration++) {
      const coupling = tf.softmax(logits); // over output capsules
      const c = tf.reshape(tf.transpose(coupling, [0, 2, 1]), [batch * classes, 1, inCaps]);
      let pooled = weightedSum(c, uHat) as tf.Tensor;
      if (cfg.routingPool === 'mean') pooled = tf.div(pooled, tf.sum(c, 2, true));
      const s = tf.reshape(pooled, [batch, classes, outDim]);
      v = squash(s) as tf.Tensor3D;
      if (iteration < cfg.routingIterations - 1) {
        const agreement = agreementProduct(uHat, tf.reshape(v, [batch * classes, outDim, 1])); // [b*classes, inCaps, 1]
        const a = tf.transpose(tf.reshape(agreement, [batch, classes, inCaps]), [0, 2, 1]);
        logits = cfg.routingRule === 'reassign' ? a : tf.add(logits, a);
      }
    }
    return v!;
  });
}
