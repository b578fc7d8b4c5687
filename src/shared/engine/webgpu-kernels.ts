// Custom WGSL kernels for the webgpu engine, where tfjs spends a chain of dispatches on what is one
// pass over the data. Each is a registered tfjs kernel (so tf.profile and the device counters see
// it) with a registered gradient, and is tested against the cpu backend's stock ops.
//   TricapsSquash      x [..., dim] -> squash(x) along the last axis (model/squash.ts's formula);
//                      tfjs: 8 dispatches forward, about 14 backward; here 1 and 1.
//   TricapsSquashGrad  (x, dy) -> dL/dx
//   TricapsBnApply     BatchNorm's normalisation, (x - mean) * rstd * gamma + beta, per channel of
//                      NHWC x in one pass (tfjs: 4 dispatches and an x-hat tensor kept for backward)
//   TricapsBnDyXhat    dy * x-hat (x-hat recomputed, not stored), for dgamma's reduction
//   TricapsBnGrad      dx = gamma * rstd * (dy - dbeta / m - x-hat * dgamma / m) in one pass (tfjs: 7)
// Loaded only once the webgpu backend is up (engine.ts); other engines use the plain ops.
import * as tf from '@tensorflow/tfjs-core';
import { webgpu_util, type WebGPUBackend, type WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

export const SQUASH_KERNEL = 'TricapsSquash';
export const SQUASH_GRAD_KERNEL = 'TricapsSquashGrad';

/** Shared with model/squash.ts (the epsilon inside the root). */
const ROOT_EPSILON = '1e-7';

/**
 * One invocation per output element of an elementwise kernel over `shape` (all inputs that shape,
 * or [C] per-channel vectors indexed by `c`). DIM is the last axis (a capsule, or the channels).
 */
class ElementProgram implements WebGPUProgram {
  readonly outputShape: number[];
  readonly shaderKey: string;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [64, 1, 1];
  readonly size = true;

  constructor(
    readonly variableNames: string[],
    shape: number[],
    name: string,
    private readonly body: string,
    private readonly constants: Record<string, string> = {},
  ) {
    this.outputShape = shape;
    this.shaderKey = `tricaps_${name}_${shape[shape.length - 1]}_${Object.values(constants).join('_')}`;
    this.dispatchLayout = webgpu_util.flatDispatchLayout(shape);
    this.dispatch = webgpu_util.computeDispatch(this.dispatchLayout, shape, this.workgroupSize);
  }

  getUserCode(): string {
    const constants = Object.entries(this.constants)
      .map(([k, v]) => `const ${k} : f32 = ${v};`)
      .join('\n');
    return `
      const DIM : i32 = ${this.outputShape[this.outputShape.length - 1]};
      const EPS : f32 = ${ROOT_EPSILON};
      ${constants}
      fn main(index : i32) {
        if (index < uniforms.size) {
          let base = (index / DIM) * DIM;
          let c = index - base;
          ${this.body}
        }
      }`;
  }
}

const squashBody = `
  var n2 = 0.0;
  for (var j = 0; j < DIM; j++) {
    let v = A[base + j];
    n2 = n2 + v * v;
  }
  setOutputAtIndex(index, A[index] * (n2 / ((1.0 + n2) * sqrt(n2 + EPS))));`;

// y = s f(n), n = |s|^2, f(n) = n g(n), g(n) = 1 / ((1 + n) sqrt(n + eps)):
// dL/ds_i = dy_i f + 2 s_i f'(n) <dy, s>, f'(n) = g (1 - n / (1 + n) - n / (2 (n + eps))) (finite at 0).
const squashGradBody = `
  var n2 = 0.0;
  var dot = 0.0;
  for (var j = 0; j < DIM; j++) {
    let v = X[base + j];
    n2 = n2 + v * v;
    dot = dot + DY[base + j] * v;
  }
  let g = 1.0 / ((1.0 + n2) * sqrt(n2 + EPS));
  let fp = g * (1.0 - n2 / (1.0 + n2) - n2 / (2.0 * (n2 + EPS)));
  setOutputAtIndex(index, DY[index] * n2 * g + 2.0 * dot * fp * X[index]);`;

export const BN_APPLY_KERNEL = 'TricapsBnApply';
export const BN_DY_XHAT_KERNEL = 'TricapsBnDyXhat';
export const BN_GRAD_KERNEL = 'TricapsBnGrad';

const xhat = 'let xh = (X[index] - MEAN[c]) * RSTD[c];';
const bnKernels: { name: string; inputs: string[]; body: string; count?: boolean }[] = [
  {
    name: BN_APPLY_KERNEL,
    inputs: ['X', 'MEAN', 'RSTD', 'GAMMA', 'BETA'],
    body: `${xhat} setOutputAtIndex(index, xh * GAMMA[c] + BETA[c]);`,
  },
  {
    name: BN_DY_XHAT_KERNEL,
    inputs: ['DY', 'X', 'MEAN', 'RSTD'],
    body: `${xhat} setOutputAtIndex(index, DY[index] * xh);`,
  },
  {
    name: BN_GRAD_KERNEL,
    inputs: ['DY', 'X', 'MEAN', 'RSTD', 'GAMMA', 'DBETA', 'DGAMMA'],
    body: `${xhat} setOutputAtIndex(index, GAMMA[c] * RSTD[c] * (DY[index] - DBETA[c] / COUNT - xh * DGAMMA[c] / COUNT));`,
    count: true,
  },
];

let registered = false;

export function registerWebGpuKernels(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: SQUASH_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      return (backend as WebGPUBackend).runWebGPUProgram(
        new ElementProgram(['A'], x.shape, 'squash', squashBody),
        [x],
        'float32',
      );
    },
  });
  tf.registerKernel({
    kernelName: SQUASH_GRAD_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
      return (backend as WebGPUBackend).runWebGPUProgram(
        new ElementProgram(['X', 'DY'], x.shape, 'squash_grad', squashGradBody),
        [x, dy],
        'float32',
      );
    },
  });
  for (const k of bnKernels) {
    tf.registerKernel({
      kernelName: k.name,
      backendName: 'webgpu',
      kernelFunc: ({ inputs, backend }) => {
        const infos = k.inputs.map((name) => (inputs as Record<string, tf.TensorInfo>)[name.toLowerCase()]);
        const shape = infos[0].shape;
        // Elements per channel (the reductions' count), baked into the shader: one per layer shape.
        const count = shape.slice(0, -1).reduce((a, b) => a * b, 1);
        const program = new ElementProgram(k.inputs, shape, k.name, k.body, k.count ? { COUNT: `${count}.0` } : {});
        return (backend as WebGPUBackend).runWebGPUProgram(program, infos, 'float32');
      },
    });
  }
  tf.registerGradient({
    kernelName: SQUASH_KERNEL,
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => {
      const [x] = saved;
      return { x: () => tf.engine().runKernel(SQUASH_GRAD_KERNEL, { x, dy: dy as tf.Tensor }) as tf.Tensor };
    },
  });
}
