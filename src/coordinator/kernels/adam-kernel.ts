// Host Adam's arrays and its update: weights (parameters, then buffers), first and second moments
// and a staging area for the step's gradient, all in one WebAssembly memory so that adam.wat's SIMD
// loop updates them in place (one instance, and one memory, per optimizer). Where WebAssembly SIMD
// is missing, the same arrays live in plain memory and host-adam.ts's loop (the same numbers) runs.
import { adamStep, type AdamScalars } from '../host-adam.js';
import { ADAM_WASM_BASE64 } from './adam-wasm.js';

let compiled: WebAssembly.Module | null | undefined;

/** The assembled kernel, or null where this runtime cannot compile it (no SIMD). */
function kernelModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = new WebAssembly.Module(Buffer.from(ADAM_WASM_BASE64, 'base64'));
    } catch {
      compiled = null;
    }
  }
  return compiled;
}

type AdamExport = (
  w: number,
  m: number,
  v: number,
  g: number,
  n: number,
  b1: number,
  c1: number,
  b2: number,
  c2: number,
  eps: number,
  step: number,
  o1: number,
  o2: number,
) => void;

const PAGE = 65536;
const align16 = (bytes: number) => Math.ceil(bytes / 16) * 16;

export class AdamArrays {
  /** Parameters, then buffers: the weights vector. */
  readonly weights: Float32Array;
  readonly m: Float32Array;
  readonly v: Float32Array;
  /** Where the step's gradient (every parameter, in order) is put before step(). */
  readonly gradient: Float32Array;
  readonly simd: boolean;
  private readonly kernel: AdamExport | undefined;

  constructor(weightsLength: number, trainableLength: number, opts: { simd?: boolean } = {}) {
    if (trainableLength > weightsLength)
      throw new Error(`AdamArrays: ${trainableLength} trainable values in a vector of ${weightsLength}`);
    const mod = opts.simd === false ? null : kernelModule();
    if (!mod) {
      this.simd = false;
      this.weights = new Float32Array(weightsLength);
      this.m = new Float32Array(trainableLength);
      this.v = new Float32Array(trainableLength);
      this.gradient = new Float32Array(trainableLength);
      return;
    }
    const instance = new WebAssembly.Instance(mod);
    const memory = instance.exports.memory as WebAssembly.Memory;
    const at = [0];
    for (const n of [weightsLength, trainableLength, trainableLength, trainableLength])
      at.push(at[at.length - 1] + align16(4 * n));
    const pages = Math.ceil(at[4] / PAGE);
    if (pages > memory.buffer.byteLength / PAGE) memory.grow(pages - memory.buffer.byteLength / PAGE);
    const view = (i: number, n: number) => new Float32Array(memory.buffer, at[i], n);
    this.weights = view(0, weightsLength);
    this.m = view(1, trainableLength);
    this.v = view(2, trainableLength);
    this.gradient = view(3, trainableLength);
    this.kernel = instance.exports.adam as AdamExport;
    this.simd = true;
  }

  /** One Adam step of every parameter with `gradient`. */
  step(c: AdamScalars): void {
    if (!this.kernel) return adamStep(this.weights, this.m, this.v, this.gradient, 0, c);
    const f = Math.fround;
    this.kernel(
      this.weights.byteOffset,
      this.m.byteOffset,
      this.v.byteOffset,
      this.gradient.byteOffset,
      this.gradient.length,
      f(c.beta1),
      f(1 - c.beta1),
      f(c.beta2),
      f(1 - c.beta2),
      f(c.epsilon),
      f(-c.learningRate),
      f(1 - f(c.accBeta1)),
      f(1 - f(c.accBeta2)),
    );
  }
}
