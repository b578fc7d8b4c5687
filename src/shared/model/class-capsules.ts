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

export function computeOutputShape(inputShape: [number, number, number], classes: number, outDim: number): [number, number, number] {
  return [inputShape[0], classes, outDim];
}

export type ClassCapsulesConfig = Pick<ModelConfig, 'categories' | 'classCapsuleDim' | 'routingIterations' | 'routingRule'> & Partial<Pick<ModelConfig, 'routingPool'>>;

export function classCapsules(u: tf.Tensor3D, weight: tf.Tensor2D, cfg: ClassCapsulesConfig): tf.Tensor3D {
  return tf.tidy(() => {
    const [batch, inCaps, inDim] = u.shape;
    const classes = cfg.categories;
    const outDim = cfg.classCapsuleDim;
    const perClass = tf.transpose(tf.reshape(weight, [inDim, classes, outDim]), [1, 0, 2]) as tf.Tensor3D; // [classes, inDim, outDim]
    const byClass = (t: tf.Tensor) => tf.transpose(t, [1, 0, 2]) as tf.Tensor3D; // [batch, classes, d] <-> [classes, batch, d]
    let logits: tf.Tensor = tf.zeros([batch, inCaps, classes]);
    let v: tf.Tensor3D | undefined;
    for (let iteration = 0; iteration < cfg.routingIterations; iteration++) {
      const coupling = tf.softmax(logits) as tf.Tensor3D; // over classes
      const couplingT = tf.transpose(coupling, [0, 2, 1]) as tf.Tensor3D; // [batch, classes, inCaps]
      let pooled: tf.Tensor3D = tf.matMul(couplingT, u); // [batch, classes, inDim]
      if (cfg.routingPool === 'mean') pooled = tf.div(pooled, tf.sum(couplingT, 2, true));
      const s = byClass(tf.matMul(byClass(pooled), perClass)); // [batch, classes, outDim]
      v = squash(s) as tf.Tensor3D;
      if (iteration < cfg.routingIterations - 1) {
        const q = byClass(tf.matMul(byClass(v), perClass, false, true)); // W_j v_j: [batch, classes, inDim]
        const agreement = tf.matMul(u, q, false, true); // [batch, inCaps, classes]
        logits = cfg.routingRule === 'reassign' ? agreement : tf.add(logits, agreement);
      }
    }
    return v!;
  });
}
