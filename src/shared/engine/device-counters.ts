// Hardware-independent counters of what a step asks of the device: read-backs (awaited and
// synchronous), kernel dispatches, bytes uploaded and peak buffer bytes. They are the figures that
// decide speed on a real GPU (each read drains the queue; each dispatch costs microseconds), and
// they can be measured on any adapter, lavapipe included. Implemented by wrapping the current tfjs
// backend's methods; the webgpu backend reports dispatches, uploads and buffers, every backend
// reports reads. `uninstall()` restores the backend.
import * as tf from '@tensorflow/tfjs-core';

export interface DeviceCounts {
  /** Awaited reads (`data()`, `array()`) that went to the device (cached values are not counted). */
  asyncReads: number;
  /** Blocking reads (`dataSync()`, `arraySync()`). On webgpu in Node these fail (no OffscreenCanvas). */
  syncReads: number;
  /** Compute shader dispatches (webgpu). */
  dispatches: number;
  /** Bytes copied from host to device buffers (webgpu). */
  uploadedBytes: number;
  /** Highest device buffer bytes allocated by the backend's buffer pool (webgpu). */
  peakBufferBytes: number;
}

interface WebGpuInternals {
  tensorMap: {
    get(id: object): { values: unknown; resource: unknown; dtype: string; shape: number[] } | undefined;
    has(id: object): boolean;
  };
  bufferManager?: { numBytesAllocated: number };
  recordAndSubmit?: (...args: unknown[]) => unknown;
  uploadToGPU?: (dataId: object) => void;
}

type Backend = tf.KernelBackend & Partial<WebGpuInternals> & Record<string, unknown>;

export class DeviceCounters {
  private counts: DeviceCounts = zeroCounts();
  private readonly restore: (() => void)[] = [];

  private constructor(private readonly backend: Backend) {}

  /** Starts counting on the current backend. */
  static install(): DeviceCounters {
    const counters = new DeviceCounters(tf.backend() as Backend);
    counters.wrap();
    return counters;
  }

  /** The counts since the last reset (peak bytes: the highest seen since then). */
  snapshot(): DeviceCounts {
    this.notePeak();
    return { ...this.counts };
  }

  reset(): void {
    this.counts = zeroCounts();
    this.notePeak();
  }

  uninstall(): void {
    for (const undo of this.restore.splice(0)) undo();
  }

  private notePeak(): void {
    const allocated = this.backend.bufferManager?.numBytesAllocated;
    if (allocated !== undefined) this.counts.peakBufferBytes = Math.max(this.counts.peakBufferBytes, allocated);
  }

  /** Replaces backend[method] with a wrapper that calls `before` first. */
  private hook(method: string, before: (...args: unknown[]) => void): void {
    const original = this.backend[method] as ((...args: unknown[]) => unknown) | undefined;
    if (typeof original !== 'function') return;
    const backend = this.backend;
    backend[method] = function (this: unknown, ...args: unknown[]) {
      before(...args);
      return original.apply(backend, args);
    };
    this.restore.push(() => delete backend[method]);
  }

  private wrap(): void {
    const b = this.backend;
    // webgpu keeps a read's values on the host afterwards: reading them again costs the device nothing.
    const cachedOnHost = (dataId: unknown) => {
      const data = b.tensorMap?.get(dataId as object);
      return data !== undefined && 'resource' in data && data.values != null;
    };
    let insideRead = false; // cpu and wasm implement read() with readSync(): count that once
    const read = b.read.bind(b);
    b.read = (dataId: object) => {
      if (!cachedOnHost(dataId)) this.counts.asyncReads++;
      insideRead = true;
      try {
        return read(dataId);
      } finally {
        insideRead = false;
      }
    };
    this.restore.push(() => delete (b as Record<string, unknown>).read);
    this.hook('readSync', () => {
      if (!insideRead) this.counts.syncReads++;
    });
    this.hook('recordAndSubmit', () => {
      this.counts.dispatches++;
      this.notePeak();
    });
    this.hook('uploadToGPU', (dataId) => {
      const data = b.tensorMap?.get(dataId as object);
      if (data && data.resource == null && data.values != null) {
        const elements = data.shape.reduce((x, y) => x * y, 1);
        this.counts.uploadedBytes += elements * 4; // float32, int32 and bool all take 4 bytes on webgpu
      }
    });
  }
}

function zeroCounts(): DeviceCounts {
  return { asyncReads: 0, syncReads: 0, dispatches: 0, uploadedBytes: 0, peakBufferBytes: 0 };
}
