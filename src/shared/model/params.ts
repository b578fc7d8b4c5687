// Model state: trainable parameters and BatchNorm buffers as tfjs Variables, created from the
// architecture's ParamSpec list with a deterministic (engine-independent) initialiser.
import * as tf from '@tensorflow/tfjs-core';
import { Rng } from '../rng.js';
import type { Architecture, ParamSpec } from './architecture.js';

export interface ModelState {
  arch: Architecture;
  /** Parameters in architecture order, keyed by their stable names ("stem/conv/kernel"). */
  trainable: Map<string, tf.Variable>;
  buffers: Map<string, tf.Variable>;
  dispose(): void;
}

let instanceCounter = 0;

/** Glorot-uniform (Keras default) with fans computed like Keras for conv kernels and matrices. */
function glorotLimit(shape: number[]): number {
  const receptive = shape.length > 2 ? shape.slice(0, -2).reduce((a, b) => a * b, 1) : 1;
  const fanIn = shape[shape.length - 2] * receptive;
  const fanOut = shape[shape.length - 1] * receptive;
  return Math.sqrt(6 / (fanIn + fanOut));
}

export function initialValues(spec: ParamSpec, seed: number, index: number): Float32Array {
  const size = spec.shape.reduce((a, b) => a * b, 1);
  const values = new Float32Array(size);
  if (spec.init === 'ones') values.fill(1);
  else if (spec.init === 'glorot') {
    const rng = Rng.from(seed, 0x1417, index);
    const limit = glorotLimit(spec.shape);
    for (let i = 0; i < size; i++) values[i] = rng.uniform(-limit, limit);
  }
  return values;
}

/** Creates the variables on the current backend. Values default to a fresh initialisation. */
export function createModelState(arch: Architecture, seed: number, values?: Map<string, Float32Array>): ModelState {
  const id = instanceCounter++;
  const trainable = new Map<string, tf.Variable>();
  const buffers = new Map<string, tf.Variable>();
  arch.params.forEach((spec, index) => {
    const data = values?.get(spec.name) ?? initialValues(spec, seed, index);
    const expected = spec.shape.reduce((a, b) => a * b, 1);
    if (data.length !== expected)
      throw new Error(`parameter ${spec.name}: ${data.length} values for shape [${spec.shape}] (${expected})`);
    // Variable names are global to the tfjs engine: prefix with an instance id.
    const variable = tf.variable(tf.tensor(data, spec.shape), spec.trainable, `m${id}/${spec.name}`);
    (spec.trainable ? trainable : buffers).set(spec.name, variable);
  });
  return {
    arch,
    trainable,
    buffers,
    dispose() {
      for (const v of [...trainable.values(), ...buffers.values()]) v.dispose();
    },
  };
}

/**
 * A tensor of host values that the caller goes on changing: the wasm backend copies them into its
 * heap at once; other backends may keep the array itself (cpu does, webgpu until its upload), so
 * they get a copy.
 */
export function tensorFromHost(values: Float32Array, shape: number[]): tf.Tensor {
  return tf.tensor(tf.getBackend() === 'wasm' ? values : values.slice(), shape);
}

/** Parameter name for a tfjs variable name created above. */
export function paramName(variableName: string): string {
  return variableName.slice(variableName.indexOf('/') + 1);
}

/** Reads every parameter and buffer to host memory (for checkpoints, tests and the wire). */
export async function readState(state: ModelState): Promise<Map<string, Float32Array>> {
  const out = new Map<string, Float32Array>();
  for (const [name, v] of [...state.trainable, ...state.buffers]) out.set(name, (await v.data()) as Float32Array);
  return out;
}
