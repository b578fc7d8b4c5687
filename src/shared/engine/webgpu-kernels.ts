// Custom WGSL kernels for the webgpu engine, where tfjs spends a chain of dispatches on what is one
// pass over the data. Each is a registered tfjs kernel (so tf.profile and the device counters see
// it) with a registered gradient, and is tested against the cpu backend's stock ops.
//   TricapsSquash      x [..., dim] -> squash(x) along the last axis (model/squash.ts's formula);
//                      tfjs: 8 dispatches forward, about 14 backward; here 1 and 1.
//   TricapsSquashGrad  (x, dy) -> dL/dx
// Loaded only once the webgpu backend is up (engine.ts); other engines use the plain ops.
import * as tf from '@tensorflow/tfjs-core';
import { webgpu_util, type WebGPUBackend, type WebGPUProgram } from '@tensorflow/tfjs-backend-webgpu';

export const SQUASH_KERNEL = 'TricapsSquash';
export const SQUASH_GRAD_KERNEL = 'TricapsSquashGrad';

/** Shared with model/squash.ts (the epsilon inside the root). */
const ROOT_EPSILON = '1e-7';

/** One invocation per element; each reads its row (a capsule: 8 or 16 values) to get |s|^2. */
class RowProgram implements WebGPUProgram {
  readonly outputShape: number[];
  readonly shaderKey: string;
  readonly dispatchLayout: { x: number[] };
  readonly dispatch: [number, number, number];
  readonly workgroupSize: [number, number, number] = [64, 1, 1];
  readonly size = true;

  constructor(
    readonly variableNames: string[],
    shape: number[],
    private readonly name: string,
    private readonly body: string,
  ) {
    this.outputShape = shape;
    const dim = shape[shape.length - 1];
    this.shaderKey = `tricaps_${name}_${dim}`;
    this.dispatchLayout = webgpu_util.flatDispatchLayout(shape);
    this.dispatch = webgpu_util.computeDispatch(this.dispatchLayout, shape, this.workgroupSize);
  }

  getUserCode(): string {
    const dim = this.outputShape[this.outputShape.length - 1];
    return `
      const DIM : i32 = ${dim};
      const EPS : f32 = ${ROOT_EPSILON};
      fn main(index : i32) {
        if (index < uniforms.size) {
          let base = (index / DIM) * DIM;
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

let registered = false;

export function registerWebGpuKernels(): void {
  if (registered) return;
  registered = true;
  tf.registerKernel({
    kernelName: SQUASH_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const x = inputs.x as tf.TensorInfo;
      return (backend as WebGPUBackend).runWebGPUProgram(new RowProgram(['A'], x.shape, 'squash', squashBody), [x], 'float32');
    },
  });
  tf.registerKernel({
    kernelName: SQUASH_GRAD_KERNEL,
    backendName: 'webgpu',
    kernelFunc: ({ inputs, backend }) => {
      const { x, dy } = inputs as { x: tf.TensorInfo; dy: tf.TensorInfo };
      return (backend as WebGPUBackend).runWebGPUProgram(new RowProgram(['X', 'DY'], x.shape, 'squash_grad', squashGradBody), [x, dy], 'float32');
    },
  });
  tf.registerGradient({
    kernelName: SQUASH_KERNEL,
    inputsToSave: ['x'],
    gradFunc: (dy, saved) => {
      const [x] = saved;
      return { x: () => tf.engine().runKernel(SQUASH_GRAD_KERNEL, { x, dy: dy as tf.Tensor }) as tf.Tensor };
    },
  });
}
