// Adam on host arrays, in one fused pass: the coordinator's update when its gradients are on the
// host already (every fleet step). It computes what tfjs's AdamOptimizer computes, op for op, each
// op rounded to float32 as a float32 backend rounds it (a product, sum, quotient or square root of
// float32 values computed in double and rounded once is the correctly rounded float32 result), so
// it is bit-identical to tfjs's Adam on the cpu and wasm backends, and a checkpoint of either
// restores into the other. About 15 operations per parameter in one loop, instead of a dozen
// kernels each reading and writing every parameter.

const f = Math.fround;

export interface AdamScalars {
  learningRate: number;
  beta1: number;
  beta2: number;
  epsilon: number;
  /** beta1^(t+1) and beta2^(t+1) after t steps, as float32 (tfjs keeps them as float32 variables). */
  accBeta1: number;
  accBeta2: number;
}

/**
 * One Adam step for one parameter: `g` is its gradient, at `from` in the weights vector `w` and in
 * the moments `m` and `v` (the trainable parameters come first in `w`, so the indexes agree); all
 * three are updated in place.
 */
export function adamStep(
  w: Float32Array,
  m: Float32Array,
  v: Float32Array,
  g: Float32Array,
  from: number,
  c: AdamScalars,
): void {
  if (from < 0 || from + g.length > m.length || m.length !== v.length || m.length > w.length)
    throw new Error(
      `adamStep: ${g.length} gradients at ${from} for ${w.length} weights and ${m.length}/${v.length} moments`,
    );
  const b1 = f(c.beta1);
  const c1 = f(1 - c.beta1);
  const b2 = f(c.beta2);
  const c2 = f(1 - c.beta2);
  const eps = f(c.epsilon);
  const step = f(-c.learningRate);
  const oneMinusAcc1 = f(1 - f(c.accBeta1));
  const oneMinusAcc2 = f(1 - f(c.accBeta2));
  for (let k = 0; k < g.length; k++) {
    const i = from + k;
    const gk = g[k];
    const m1 = f(f(m[i] * b1) + f(gk * c1));
    const v1 = f(f(v[i] * b2) + f(f(gk * gk) * c2));
    m[i] = m1;
    v[i] = v1;
    const mHat = f(m1 / oneMinusAcc1);
    const vHat = f(v1 / oneMinusAcc2);
    w[i] = f(f(f(mHat / f(f(Math.sqrt(vHat)) + eps)) * step) + w[i]);
  }
}

/** The bias-correction products after one more step (float32, as tfjs multiplies them). */
export function nextAccumulators(c: Pick<AdamScalars, 'beta1' | 'beta2' | 'accBeta1' | 'accBeta2'>): {
  accBeta1: number;
  accBeta2: number;
} {
  return { accBeta1: f(f(c.accBeta1) * f(c.beta1)), accBeta2: f(f(c.accBeta2) * f(c.beta2)) };
}
