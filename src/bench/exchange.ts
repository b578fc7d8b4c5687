// `tricaps bench exchange`: the gradient exchange alone, through the real coordinator code (gRPC
// service, decoding, validation, weighted averaging) with simulated workers on a separate thread.
// Per step every worker downloads the new weights (float32) and uploads a P-parameter gradient.
// Reports ms per step, bytes per step and GB/s through the coordinator for each (workers, params).
import { median } from '../shared/stats.js';
import { Worker as Thread } from 'node:worker_threads';
import { pino } from 'pino';
import { buildArchitecture } from '../shared/model/architecture.js';
import { modelConfig } from '../shared/model/config.js';
import { weightedAverage } from '../shared/plan/average.js';
import { encodeTensor, type EncodedChunk } from '../shared/tensor-codec.js';
import {
  FleetCoordinator,
  type TensorSpec,
  type TrainResult,
  type WeightSource,
} from '../coordinator/fleet-coordinator.js';
import { serveFleet } from '../coordinator/fleet-service.js';
import { StepWork } from '../coordinator/step-work.js';
import type { ExchangeClientsSetup } from './exchange-clients.js';

/** Parameter tensors of P values: the real SC/RC shapes (256px, 23 categories), or 1M-value slabs. */
export function exchangeSpecs(params: string): { label: string; specs: TensorSpec[] } {
  if (params === 'sc' || params === 'rc') {
    const arch = buildArchitecture(modelConfig({ variant: params, imageSize: 256, categories: 23 }));
    return {
      label: params,
      specs: arch.params.filter((p) => p.trainable).map((p) => ({ name: p.name, shape: p.shape })),
    };
  }
  const total = Number(params);
  const specs: TensorSpec[] = [];
  for (let done = 0, i = 0; done < total; i++) {
    const n = Math.min(1 << 20, total - done);
    specs.push({ name: `slab${i}`, shape: [n] });
    done += n;
  }
  return { label: String(total), specs };
}

class StaticWeights implements WeightSource {
  version = 0;
  readonly statSpecs: TensorSpec[] = [];
  private cache: { version: number; chunks: EncodedChunk[] } | undefined;
  constructor(readonly gradientSpecs: TensorSpec[]) {}
  chunks(): EncodedChunk[] {
    if (this.cache?.version !== this.version) {
      this.cache = {
        version: this.version,
        chunks: this.gradientSpecs.flatMap((s) =>
          encodeTensor(s.name, new Float32Array(s.shape.reduce((a, b) => a * b, 1)).fill(this.version * 1e-3), s.shape),
        ),
      };
    }
    return this.cache.chunks;
  }
  flat(): Float32Array {
    const size = this.gradientSpecs.reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
    return new Float32Array(size).fill(this.version * 1e-3);
  }
}

export interface ExchangeRow {
  workers: number;
  params: string;
  parameter_count: number;
  wire: 'float32' | 'float16';
  ms_per_step_median: number;
  ms_per_step_min: number;
  averaging_ms_median: number;
  gradient_bytes_per_step: number;
  weight_bytes_per_step: number;
  gradient_gb_per_s: number;
  total_gb_per_s: number;
}

export async function benchExchangeOne(
  workers: number,
  params: string,
  wire: 'float32' | 'float16',
  steps: number,
): Promise<ExchangeRow> {
  const { label, specs } = exchangeSpecs(params);
  const count = specs.reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
  const weights = new StaticWeights(specs);
  const coord = new FleetCoordinator(
    {
      runId: 'bench-exchange',
      minWorkers: workers,
      maxWorkers: workers,
      heartbeatIntervalMs: 60_000,
      heartbeatTimeoutMs: 600_000,
      assignmentTimeoutMs: 600_000,
      longPollMs: 5000,
      gradientDtype: wire,
      configJson: '{}',
    },
    weights,
    pino({ level: 'silent' }),
  );
  const server = await serveFleet(coord, '127.0.0.1:0');
  coord.start();
  const clients = new Thread(new URL('./exchange-clients.js', import.meta.url), {
    workerData: { address: server.address, workers, specs, wire } satisfies ExchangeClientsSetup,
  });
  const clientsDone = new Promise<void>((resolve, reject) => {
    clients.on('message', (m: { done?: boolean; error?: string }) =>
      m.error ? reject(new Error(`simulated workers: ${m.error}`)) : resolve(),
    );
    clients.on('error', reject);
  });
  clientsDone.catch(() => undefined);
  const times: number[] = [];
  const averaging: number[] = [];
  let averaged: Map<string, Float32Array> | undefined;
  try {
    for (let step = 0; step <= steps; step++) {
      const units = Array.from({ length: workers }, (_, index) => ({ index, imageIds: [], itemIds: [] }));
      const work = new StepWork<TrainResult>('train', step, 0, units);
      const t0 = performance.now();
      await Promise.race([
        coord.execute(work),
        clientsDone.then(() => Promise.reject(new Error('simulated workers stopped early'))),
      ]);
      const t1 = performance.now();
      averaged = weightedAverage(
        work.results.map((r) => ({ triplets: r.result.triplets, grads: r.result.grads })),
        averaged,
      ).grads;
      for (const r of work.results) coord.buffers.release(r.result.grads.values());
      weights.version += 1;
      const t2 = performance.now();
      if (step > 0) {
        times.push(t2 - t0); // step 0 is warm-up (connections, first registration)
        averaging.push(t2 - t1);
      }
    }
    await coord.finish(10_000);
    await clientsDone;
  } finally {
    coord.close();
    await clients.terminate();
    await server.shutdown();
  }
  const gradBytes = workers * count * (wire === 'float32' ? 4 : 2);
  const weightBytes = workers * count * 4;
  const ms = median(times);
  return {
    workers,
    params: label,
    parameter_count: count,
    wire,
    ms_per_step_median: ms,
    ms_per_step_min: Math.min(...times),
    averaging_ms_median: median(averaging),
    gradient_bytes_per_step: gradBytes,
    weight_bytes_per_step: weightBytes,
    gradient_gb_per_s: gradBytes / (ms / 1000) / 1e9,
    total_gb_per_s: (gradBytes + weightBytes) / (ms / 1000) / 1e9,
  };
}
