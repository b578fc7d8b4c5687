// Engine selection: which TensorFlow.js backend runs the model, and which convolution gradient it
// needs. `auto` probes the engines fastest first and says why each faster one was passed over.
//   tensorflow  @tensorflow/tfjs-node-gpu or @tensorflow/tfjs-node (optional; users install it)
//   webgpu      @tensorflow/tfjs-backend-webgpu on Dawn (npm "webgpu"), when a GPU adapter exists
//   wasm        @tensorflow/tfjs-backend-wasm (XNNPACK), always available
//   cpu         pure-JS reference backend, ~50x slower than wasm
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import type { Logger } from '../log.js';
import { UsageError } from '../errors.js';
import type { Padding } from '../model/architecture.js';
import { conv2dFastGrad } from './fast-conv.js';
import { installSharedIdentityForWasm } from './wasm-identity.js';

export const ENGINE_NAMES = ['auto', 'tensorflow', 'webgpu', 'wasm', 'cpu'] as const;
export type EngineChoice = (typeof ENGINE_NAMES)[number];
export type EngineName = Exclude<EngineChoice, 'auto'>;

/** A convolution as the model calls it; engines differ in how its gradient is computed. */
export type ConvFn = (
  x: tf.Tensor4D,
  filter: tf.Tensor4D,
  opts: { stride: number; padding: Padding; inputGrad?: boolean },
) => tf.Tensor4D;

export const stockConv: ConvFn = (x, filter, { stride, padding }) => tf.conv2d(x, filter, stride, padding);
export const fastGradConv: ConvFn = conv2dFastGrad;

export interface Engine {
  name: EngineName;
  /** The tfjs backend name registered for it ("tensorflow", "webgpu", "wasm", "cpu"). */
  backend: string;
  /** Human-readable device, e.g. the GPU adapter or "cpu (wasm simd, 1 thread)". */
  device: string;
  conv: ConvFn;
  /** Why faster engines were not used (auto only). */
  passedOver: { engine: EngineName; reason: string }[];
}

/** Linux only: Dawn reaches GPUs through Vulkan, whose loader must be installed. */
function vulkanLoaderPresent(): boolean {
  if (process.platform !== 'linux') return true;
  const dirs = [
    ...(process.env.LD_LIBRARY_PATH ?? '').split(':').filter(Boolean),
    '/usr/lib/x86_64-linux-gnu',
    '/usr/lib/aarch64-linux-gnu',
    '/usr/lib64',
    '/usr/lib',
    '/lib/x86_64-linux-gnu',
    '/lib64',
    '/usr/local/lib',
  ];
  return dirs.some((d) => existsSync(join(d, 'libvulkan.so.1')));
}

/** `auto` asks for an engine worth using; a named engine is used when it runs at all. */
export type ProbeResult = { device: string; note?: string } | { unavailable: string };
type Probe = (mode: { auto: boolean }) => Promise<ProbeResult>;

export interface AdapterFacts {
  vendor?: string;
  architecture?: string;
  device?: string;
  description?: string;
  isFallbackAdapter?: boolean;
}

function pick(info: AdapterFacts | undefined): AdapterFacts {
  return {
    vendor: info?.vendor,
    architecture: info?.architecture,
    device: info?.device,
    description: info?.description,
  };
}

/**
 * Why an adapter is a software renderer (CPU rasteriser behind Vulkan: Mesa's llvmpipe/lavapipe,
 * SwiftShader), or null for hardware. Such an adapter runs WebGPU correctly but slower than wasm.
 */
export function softwareAdapterReason(info: AdapterFacts): string | null {
  const name = info.description || info.device || info.vendor || 'unnamed adapter';
  if (info.isFallbackAdapter) return `${name} is a fallback (software) adapter`;
  if (info.architecture === 'software') return `${name} reports a software architecture`;
  if (/llvmpipe|lavapipe|swiftshader|software rasterizer/i.test(name)) return `${name} is a software renderer`;
  return null;
}

/**
 * What the webgpu engine makes of the adapter Dawn found: `auto` passes over a software one (slower
 * than wasm) and says why; a named `--engine webgpu` uses it and notes that it is one.
 */
export function adapterVerdict(facts: AdapterFacts, auto: boolean): ProbeResult {
  const software = softwareAdapterReason(facts);
  if (software && auto) return { unavailable: `${software}, slower than wasm (--engine webgpu uses it anyway)` };
  return {
    device: facts.description || facts.device || facts.vendor || 'webgpu adapter',
    note: software ? `${software}: correct but slow; asked for by --engine webgpu` : undefined,
  };
}

async function importOptional(name: string): Promise<unknown> {
  // A variable specifier keeps bundlers and tsc from resolving packages that are not installed.
  const specifier: string = name;
  return import(specifier);
}

const probes: Record<EngineName, Probe> = {
  async tensorflow() {
    for (const pkg of ['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']) {
      try {
        await importOptional(pkg);
        if (await tf.setBackend('tensorflow'))
          return { device: pkg.endsWith('-gpu') ? 'cuda (tfjs-node-gpu)' : 'cpu (tfjs-node)' };
      } catch {
        // try the next package
      }
    }
    return {
      unavailable:
        'neither @tensorflow/tfjs-node-gpu nor @tensorflow/tfjs-node is installed (install one with `npm install @tensorflow/tfjs-node-gpu@4.22.0` on a machine that can download libtensorflow; the GPU build needs CUDA 11.2 and cuDNN 8.1)',
    };
  },
  async webgpu({ auto }) {
    const g = globalThis as { navigator?: { gpu?: unknown } };
    if (!g.navigator?.gpu && !vulkanLoaderPresent()) {
      // Dawn would print a native warning and find nothing: say so without loading it.
      return {
        unavailable:
          'no Vulkan loader (libvulkan.so.1) on this machine; install libvulkan1 and a GPU driver for the webgpu engine',
      };
    }
    try {
      if (!g.navigator?.gpu) {
        const dawn = (await importOptional('webgpu')) as { create: (flags: string[]) => unknown; globals: object };
        Object.assign(globalThis, dawn.globals);
        const gpu = dawn.create([]);
        if (!g.navigator)
          Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
        else Object.assign(g.navigator, { gpu });
      }
      const gpu = g.navigator!.gpu as {
        requestAdapter: (o?: object) => Promise<{ info?: AdapterFacts; isFallbackAdapter?: boolean } | null>;
      };
      const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
      if (!adapter)
        return { unavailable: 'Dawn found no GPU adapter (no Vulkan-capable GPU or Vulkan loader on this machine)' };
      // GPUAdapterInfo's fields are prototype getters: read them one by one (a spread copies none).
      const facts: AdapterFacts = {
        ...pick(adapter.info),
        isFallbackAdapter: adapter.info?.isFallbackAdapter ?? adapter.isFallbackAdapter,
      };
      const verdict = adapterVerdict(facts, auto);
      if ('unavailable' in verdict) return verdict;
      // The backend registers itself only if navigator.gpu exists when it is imported: import it now.
      await import('@tensorflow/tfjs-backend-webgpu');
      (await import('./webgpu-kernels.js')).registerWebGpuKernels();
      if (!(await tf.setBackend('webgpu'))) return { unavailable: 'the tfjs webgpu backend failed to initialise' };
      return verdict;
    } catch (err) {
      return { unavailable: `the webgpu package could not start Dawn (${(err as Error).message})` };
    }
  },
  async wasm() {
    await import('@tensorflow/tfjs-backend-wasm');
    installSharedIdentityForWasm();
    if (!(await tf.setBackend('wasm'))) return { unavailable: 'the wasm backend failed to initialise' };
    const threads = tf.env().getBool('WASM_HAS_MULTITHREAD_SUPPORT') ? 'threaded' : '1 thread';
    const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT') ? 'simd' : 'no simd';
    return { device: `cpu (wasm ${simd}, ${threads})` };
  },
  async cpu() {
    await import('@tensorflow/tfjs-backend-cpu');
    await tf.setBackend('cpu');
    return { device: 'cpu (pure JavaScript reference backend)' };
  },
};

/** Engines that need our convolution gradients (their stock backward kernels are missing or slow). */
const FAST_GRAD_ENGINES = new Set<EngineName>(['wasm', 'webgpu']);

const AUTO_ORDER: EngineName[] = ['tensorflow', 'webgpu', 'wasm', 'cpu'];

/** The engine a choice comes to (a probe has made its backend current), and the line that says why. */
export interface EngineSelection {
  name: EngineName;
  device: string;
  note?: string;
  passedOver: Engine['passedOver'];
  /** `engine wasm on cpu (...) (auto; passed over tensorflow: ...; webgpu: ...)` */
  message: string;
}

/**
 * The rule behind `--engine`: a named engine is probed alone; `auto` probes tensorflow, webgpu, wasm
 * and cpu in that order (fastest first) and takes the first that is available, recording why each
 * one before it was passed over. Throws (naming every reason) when none is. Pure but for `probe`.
 */
export async function selectEngine(
  choice: EngineChoice,
  probe: (name: EngineName, mode: { auto: boolean }) => Promise<ProbeResult>,
): Promise<EngineSelection> {
  if (!(ENGINE_NAMES as readonly string[]).includes(choice)) {
    throw new UsageError(`unknown engine "${choice}": choose one of ${ENGINE_NAMES.join(', ')}`);
  }
  const candidates = choice === 'auto' ? AUTO_ORDER : [choice];
  const passedOver: Engine['passedOver'] = [];
  const reasons = () => passedOver.map((p) => `${p.engine}: ${p.reason}`).join('; ');
  for (const name of candidates) {
    const result = await probe(name, { auto: choice === 'auto' });
    if ('unavailable' in result) {
      passedOver.push({ engine: name, reason: result.unavailable });
      continue;
    }
    const why = choice === 'auto' ? ` (auto${passedOver.length ? `; passed over ${reasons()}` : ''})` : '';
    return {
      name,
      device: result.device,
      note: result.note,
      passedOver,
      message: `engine ${name} on ${result.device}${why}${result.note ? ` (${result.note})` : ''}`,
    };
  }
  throw new UsageError(
    `engine "${choice}" is not available here: ${reasons()}. Use --engine wasm (always available) or --engine auto.`,
  );
}

/** Initialises the requested engine (or the fastest available for `auto`) and makes it current. */
export async function initEngine(choice: EngineChoice, log?: Logger): Promise<Engine> {
  const chosen = await selectEngine(choice, (name, mode) => probes[name](mode));
  await tf.ready();
  const engine: Engine = {
    name: chosen.name,
    backend: tf.getBackend(),
    device: chosen.device,
    conv: FAST_GRAD_ENGINES.has(chosen.name) ? fastGradConv : stockConv,
    passedOver: chosen.passedOver,
  };
  log?.info(
    { engine: chosen.name, device: chosen.device, passedOver: chosen.passedOver, note: chosen.note },
    chosen.message,
  );
  return engine;
}
