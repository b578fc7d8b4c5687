// A model of a synchronous step's time on N workers, to project the fleet past one machine. Its
// inputs are costs measured here (`bench scale`: CPU seconds per byte handled by the coordinator and
// by a worker, the coordinator's fixed per-step work, a per-message latency) and the link rate as a
// parameter. Each phase takes as long as its slowest resource: the wire, the coordinator's CPU, or
// one worker's CPU (a byte sent and a byte received both cost CPU; a link carries both directions at
// once). Phases run one after the other (no pipelining), which is how the exchange works today.
//
// On one machine (`bench scale`) the processes share `cores` CPUs: the part of a step that is not
// compute cannot be shorter than all processes' exchange CPU divided over those cores. The model
// says so when given the core count, which is how its check against the emulation accounts for the
// shared CPU; without it, every process has CPUs of its own (separate boxes: the projection).
export interface StepCosts {
  gradientBytes: number;
  weightsBytes: number;
  linkBits: number;
  computeMs: number;
  /** Coordinator work per step that does not scale with bytes (Adam, planning, logging). */
  fixedMs: number;
  /** CPU seconds per byte sent or received by the coordinator, and by a worker. */
  coordinatorSecondsPerByte: number;
  workerSecondsPerByte: number;
  /** One message's latency (a gRPC call or ring hop on the link). */
  messageMs: number;
}

export type ExchangeKind = 'central' | 'ring';

export interface Projection {
  workers: number;
  exchange: ExchangeKind;
  step_ms: number;
  exchange_ms: number;
  efficiency: number;
  /** CPU milliseconds per step for the exchange: the coordinator's, and one worker's. */
  coordinator_cpu_ms: number;
  worker_cpu_ms: number;
}

/**
 * Central: the coordinator receives N gradients, steps, sends N weight copies; its link and CPU carry
 * N times the model each way. Ring (reduce-scatter, one slice each to the coordinator, a weights
 * slice back to each, all-gather): each worker sends and receives (N-1)/N of the gradient and of the
 * weights over its own link, 2(N-1) hops of latency, and the coordinator one gradient and one weights
 * copy whatever N.
 */
export function projectStep(
  c: StepCosts,
  workers: number,
  exchange: ExchangeKind,
  shared?: { cores: number },
): Projection {
  const n = workers;
  const G = c.gradientBytes;
  const W = c.weightsBytes;
  const wire = (bytes: number) => (1000 * bytes * 8) / c.linkBits;
  const coordinator = (bytes: number) => 1000 * bytes * c.coordinatorSecondsPerByte;
  const worker = (bytes: number) => 1000 * bytes * c.workerSecondsPerByte;
  /** A phase: the slowest of the wire (bytes on the busiest link) and each process's CPU. */
  const phase = (wireBytes: number, coordinatorBytes: number, workerBytes: number) =>
    Math.max(wire(wireBytes), coordinator(coordinatorBytes), worker(workerBytes));
  let ms: number;
  let coordinatorCpu: number;
  let workerCpu: number;
  if (exchange === 'central' || n === 1) {
    ms = phase(n * G, n * G, G) + c.fixedMs + phase(n * W, n * W, W) + 2 * c.messageMs;
    coordinatorCpu = coordinator(n * (G + W)) + c.fixedMs;
    workerCpu = worker(G + W);
  } else {
    const share = (n - 1) / n;
    ms =
      phase(W, W, W / n) + // each member's weights slice from the coordinator
      phase(share * W, 0, 2 * share * W) + // all-gather
      (n - 1) * c.messageMs +
      phase(share * G, 0, 2 * share * G) + // reduce-scatter
      (n - 1) * c.messageMs +
      phase(G, G, G / n) + // each member's reduced slice to the coordinator
      c.fixedMs +
      2 * c.messageMs;
    coordinatorCpu = coordinator(G + W) + c.fixedMs;
    workerCpu = worker((W + G) / n + 2 * share * (W + G));
  }
  if (shared) ms = Math.max(ms, (coordinatorCpu + n * workerCpu) / shared.cores);
  const step = c.computeMs + ms;
  return {
    workers: n,
    exchange,
    step_ms: step,
    exchange_ms: ms,
    efficiency: c.computeMs / step,
    coordinator_cpu_ms: coordinatorCpu,
    worker_cpu_ms: workerCpu,
  };
}

/** Calibration from `bench scale` rows of the central exchange (N = 1 and the largest N measured). */
export function calibrate(
  rows: {
    exchange: string;
    workers: number;
    step_ms_median: number;
    coordinator_bytes_per_step: number;
    worker_bytes_per_step: number;
    coordinator_cpu_s_per_step: number;
    worker_cpu_s_per_step: number;
  }[],
  o: { computeMs: number; linkBits: number; gradientBytes: number; weightsBytes: number; messageMs: number },
): StepCosts {
  const central = rows.filter((r) => r.exchange === 'central').sort((a, b) => a.workers - b.workers);
  if (central.length === 0) throw new Error('calibrate: no central rows');
  const perByte = (cpu: number, bytes: number) => (bytes > 0 ? cpu / bytes : 0);
  // CPU per byte from the largest fleet (most bytes, least noise); workers' from the mean.
  const big = central.at(-1)!;
  const coordinatorSecondsPerByte = perByte(big.coordinator_cpu_s_per_step, big.coordinator_bytes_per_step);
  const workerSecondsPerByte =
    central.reduce((s, r) => s + perByte(r.worker_cpu_s_per_step, r.worker_bytes_per_step), 0) / central.length;
  const costs: StepCosts = { ...o, fixedMs: 0, coordinatorSecondsPerByte, workerSecondsPerByte };
  // The fixed part: what one worker's measured step leaves once compute and the bytes are counted.
  const one = central[0];
  const modelled = projectStep(costs, one.workers, 'central').step_ms;
  return { ...costs, fixedMs: Math.max(0, one.step_ms_median - modelled) };
}
