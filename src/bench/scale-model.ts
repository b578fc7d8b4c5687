// A model of a synchronous step's time on N workers, to project the fleet past one machine. Its
// inputs are costs measured here (`bench scale`: CPU seconds per byte of the coordinator and of a
// worker, the fixed per-step work of the coordinator, a per-message latency) and the link rate as a
// parameter. Each phase takes as long as its slower resource, the wire or the CPU handling the bytes;
// phases run one after the other (no pipelining), which is how the exchange works today.
export interface StepCosts {
  gradientBytes: number;
  weightsBytes: number;
  linkBits: number;
  computeMs: number;
  /** Coordinator work per step that does not scale with bytes (Adam, planning, logging). */
  fixedMs: number;
  /** CPU seconds per byte moved through the coordinator, and through a worker. */
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
}

/** Time to move bytes through one process's link and CPU: the slower of the two. */
const move = (bytes: number, linkBits: number, secondsPerByte: number) =>
  1000 * Math.max((bytes * 8) / linkBits, bytes * secondsPerByte);

/**
 * Central: the coordinator receives N gradients, steps, sends N weight copies; its link and CPU carry
 * N times the model each way. Ring (as designed in issue 16: reduce-scatter, one slice each to the
 * coordinator, a weights slice back to each, all-gather): each worker moves (N-1)/N of the gradient
 * and of the weights over its own link, 2(N-1) hops of latency, and the coordinator one gradient and
 * one weights copy whatever N.
 */
export function projectStep(c: StepCosts, workers: number, exchange: ExchangeKind): Projection {
  const n = workers;
  const G = c.gradientBytes;
  const W = c.weightsBytes;
  let ms: number;
  if (exchange === 'central' || n === 1) {
    ms =
      move(n * G, c.linkBits, c.coordinatorSecondsPerByte) +
      c.fixedMs +
      move(n * W, c.linkBits, c.coordinatorSecondsPerByte) +
      2 * c.messageMs;
  } else {
    const share = (n - 1) / n;
    ms =
      move(share * G, c.linkBits, c.workerSecondsPerByte) +
      (n - 1) * c.messageMs +
      move(G, c.linkBits, c.coordinatorSecondsPerByte) +
      c.fixedMs +
      move(W, c.linkBits, c.coordinatorSecondsPerByte) +
      move(share * W, c.linkBits, c.workerSecondsPerByte) +
      (n - 1) * c.messageMs +
      2 * c.messageMs;
  }
  const step = c.computeMs + ms;
  return { workers: n, exchange, step_ms: step, exchange_ms: ms, efficiency: c.computeMs / step };
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
