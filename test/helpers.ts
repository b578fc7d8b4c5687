// Shared test helpers: backend switching, numeric comparison, a small disk that fills up.
import { execFileSync } from 'node:child_process';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import { installSharedIdentityForWasm } from '../src/shared/engine/wasm-identity.js';

tf.env().set('PROD', true); // no "install tfjs-node" banner in test output

export async function useBackend(name: 'cpu' | 'wasm' | 'webgpu'): Promise<void> {
  if (name === 'webgpu') {
    const reason = await webgpuUnavailable();
    if (reason) throw new Error(`webgpu: ${reason}`);
  }
  if (name === 'wasm') installSharedIdentityForWasm(); // as the wasm engine runs it
  await tf.setBackend(name);
  await tf.ready();
}

let webgpuProbe: Promise<string | null> | undefined;

/**
 * Null when the webgpu engine starts here (Dawn finds an adapter, lavapipe included), else why not.
 * Starts it once per test process (through the engine's own probe) and leaves cpu current.
 */
export function webgpuUnavailable(): Promise<string | null> {
  webgpuProbe ??= (async () => {
    const { initEngine } = await import('../src/shared/engine/engine.js');
    try {
      await initEngine('webgpu');
      return null;
    } catch (err) {
      return (err as Error).message;
    } finally {
      await tf.setBackend('cpu');
    }
  })();
  return webgpuProbe;
}

/**
 * The webgpu tests run wherever `make test` could install lavapipe (Debian bookworm: the Makefile sets
 * TRICAPS_REQUIRE_WEBGPU=1), and fail there if the engine does not start; elsewhere they skip and say
 * why. Returns the reason to skip, or null to run.
 */
export async function webgpuSkipReason(): Promise<string | null> {
  const reason = await webgpuUnavailable();
  if (reason && process.env.TRICAPS_REQUIRE_WEBGPU === '1') {
    throw new Error(`TRICAPS_REQUIRE_WEBGPU=1 but the webgpu engine does not start: ${reason}`);
  }
  if (reason) console.warn(`skipping webgpu tests: ${reason}`);
  return reason;
}

/** max |a - b| / max(|b|, tiny): a scale-aware relative error. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let maxDiff = 0;
  let maxRef = 1e-12;
  for (let i = 0; i < a.length; i++) {
    maxDiff = Math.max(maxDiff, Math.abs(a[i] - b[i]));
    maxRef = Math.max(maxRef, Math.abs(b[i]));
  }
  return maxDiff / maxRef;
}

export function seededNormal(shape: number[], seed: number): tf.Tensor {
  return tf.randomNormal(shape, 0, 1, 'float32', seed);
}

/** Squared Euclidean distances between all rows of flat embeddings (reference for tests). */
export function pairwiseSquaredDistances(embeddings: tf.Tensor2D): tf.Tensor2D {
  return tf.tidy(
    () => tf.sum(tf.square(tf.sub(tf.expandDims(embeddings, 1), tf.expandDims(embeddings, 0))), -1) as tf.Tensor2D,
  );
}

/**
 * Per-tensor closeness of two sets of gradients (or statistics) computed two ways: each tensor within
 * 1e-3 of its own largest value, except tensors whose true value is ~0 (biases in front of BatchNorm,
 * which removes any shift), which are held to 1e-4 of the largest value of all.
 */
export function expectTensorsClose(
  actual: Map<string, ArrayLike<number>>,
  expected: Map<string, ArrayLike<number>>,
  what: string,
  check: (diff: number, tolerance: number, name: string) => void,
): void {
  if ([...actual.keys()].join() !== [...expected.keys()].join())
    throw new Error(`${what}: tensors [${[...actual.keys()]}] vs [${[...expected.keys()]}]`);
  const largest = (g: ArrayLike<number>) => Array.from(g).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  const globalScale = Math.max(...[...expected.values()].map(largest));
  for (const [name, e] of expected) {
    const own = largest(e);
    const tolerance = own < 1e-4 * globalScale ? 1e-4 * globalScale : 1e-3 * own;
    const a = actual.get(name)!;
    let diff = 0;
    for (let i = 0; i < e.length; i++) diff = Math.max(diff, Math.abs(e[i] - a[i]));
    check(diff, tolerance, `${what} ${name}`);
  }
}

/**
 * Mounts a tmpfs of `size` (mount's syntax: 64k, 3m) on `dir`: a disk that fills up. Returns its
 * unmount, or skips the test naming why when it cannot be mounted (that needs root; CI and our
 * machines have it).
 */
export function mountSmallDisk(dir: string, size: string, ctx: { skip: (note?: string) => void }): () => void {
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' });
  } catch (err) {
    const why = `skipped: cannot mount a ${size} tmpfs (needs root): ${(err as Error).message.split('\n')[0]}`;
    console.warn(`a full disk: ${why}`);
    ctx.skip(why);
    throw err; // not reached: skip() throws
  }
  return () => execFileSync('umount', [dir], { stdio: 'ignore' });
}
