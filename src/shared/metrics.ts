// Prometheus metrics (prom-client) for the coordinator and the workers, and the HTTP endpoint that
// serves them (`--metrics-port`). Names follow Prometheus conventions: `tricaps_` prefix, base units
// (seconds, bytes), `_total` for counters. Node process metrics come from prom-client's defaults.
import { EXCHANGE_DIRECTIONS, PEER_KINDS, type ExchangeMeter } from './exchange-meter.js';
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { UsageError } from './errors.js';
import { LOSS_KINDS, REFUSAL_KINDS } from './fleet-labels.js';

/**
 * prom-client's default Node process metrics, minus three gauges it names with a `_total` suffix
 * (reserved for counters: `promtool check metrics` refuses them); their per-type twins
 * (nodejs_active_handles{type} and so on) stay.
 */
function nodeMetricsInto(registry: Registry): void {
  collectDefaultMetrics({ register: registry });
  for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'])
    registry.removeSingleMetric(name);
}

const STEP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64];

export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly info = new Gauge({
    name: 'tricaps_info',
    help: 'Constant 1, labelled with what this process is',
    labelNames: ['role', 'run', 'engine', 'device', 'version'],
    registers: [this.registry],
  });
  readonly stepPhase = new Histogram({
    name: 'tricaps_step_phase_seconds',
    help: 'Time of each phase of a training step (data and compute: slowest worker)',
    labelNames: ['phase'],
    buckets: STEP_BUCKETS,
    registers: [this.registry],
  });
  readonly stepDuration = new Histogram({
    name: 'tricaps_step_duration_seconds',
    help: 'Wall time of a training step at the coordinator',
    buckets: STEP_BUCKETS,
    registers: [this.registry],
  });
  readonly steps = new Counter({
    name: 'tricaps_steps_total',
    help: 'Optimizer steps applied by this coordinator process',
    registers: [this.registry],
  });
  readonly step = new Gauge({
    name: 'tricaps_step',
    help: 'Steps applied in the run (the next step to run)',
    registers: [this.registry],
  });
  readonly lastStep = new Gauge({
    name: 'tricaps_last_step_timestamp_seconds',
    help: 'Unix time the last step was applied (for stall alerts)',
    registers: [this.registry],
  });
  readonly images = new Gauge({
    name: 'tricaps_images_per_second',
    help: 'Training images per second in the last step',
    registers: [this.registry],
  });
  readonly triplets = new Gauge({
    name: 'tricaps_triplets_per_second',
    help: 'Triplets per second in the last step',
    registers: [this.registry],
  });
  readonly loss = new Gauge({
    name: 'tricaps_loss',
    help: 'Triplet-weighted mean loss of the last step',
    registers: [this.registry],
  });
  readonly activeFraction = new Gauge({
    name: 'tricaps_active_triplet_ratio',
    help: 'Fraction of the last step triplets with a positive hinge',
    registers: [this.registry],
  });
  readonly distance = new Gauge({
    name: 'tricaps_triplet_distance_mean',
    help: 'Mean squared embedding distance of the last step triplets, anchor to positive or negative',
    labelNames: ['pair'],
    registers: [this.registry],
  });
  readonly gradientNorm = new Gauge({
    name: 'tricaps_gradient_norm',
    help: 'L2 norm of the averaged gradient of the last step',
    registers: [this.registry],
  });
  readonly workerLag = new Gauge({
    name: 'tricaps_worker_step_lag_seconds',
    help: 'A worker data and compute time in the last step minus the median over workers',
    labelNames: ['worker'],
    registers: [this.registry],
  });
  readonly worldSize = new Gauge({
    name: 'tricaps_world_size',
    help: 'Workers in the fleet',
    registers: [this.registry],
  });
  readonly round = new Gauge({
    name: 'tricaps_membership_round',
    help: 'Membership round (changes at every join or loss)',
    registers: [this.registry],
  });
  readonly joins = new Counter({
    name: 'tricaps_worker_joins_total',
    help: 'Workers that joined',
    registers: [this.registry],
  });
  readonly losses = new Counter({
    name: 'tricaps_worker_losses_total',
    help: 'Workers lost, by reason',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly rejectedUpdates = new Counter({
    name: 'tricaps_rejected_updates_total',
    help: 'Worker results refused and never applied, by reason',
    labelNames: ['reason', 'worker'],
    registers: [this.registry],
  });
  readonly exchangeBytes = exchangeBytesCounter(this.registry);
  readonly resumes = new Counter({
    name: 'tricaps_resumes_total',
    help: 'Times this coordinator process resumed the run from a checkpoint',
    registers: [this.registry],
  });
  readonly checkpointDuration = new Histogram({
    name: 'tricaps_checkpoint_duration_seconds',
    help: 'Time to write a checkpoint',
    buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
    registers: [this.registry],
  });
  readonly checkpointBytes = new Gauge({
    name: 'tricaps_checkpoint_size_bytes',
    help: 'Size of the last checkpoint',
    registers: [this.registry],
  });
  readonly checkpointLast = new Gauge({
    name: 'tricaps_checkpoint_last_success_timestamp_seconds',
    help: 'Unix time of the last successful checkpoint',
    registers: [this.registry],
  });
  /** Whether an operator paused the run (`tricaps_paused`); read at every scrape. */
  pausedNow: () => boolean = () => false;
  readonly paused: Gauge = new Gauge({
    name: 'tricaps_paused',
    help: 'Whether an operator paused the run (1) or not (0): a paused run applies no step on purpose',
    registers: [this.registry],
    collect: (): void => this.paused.set(this.pausedNow() ? 1 : 0),
  });
  readonly natsDropped = new Counter({
    name: 'tricaps_nats_events_dropped_total',
    help: 'Events not published because NATS was unreachable',
    registers: [this.registry],
  });
  readonly recall = new Gauge({
    name: 'tricaps_recall_at_k_ratio',
    help: 'Latest retrieval Recall@K on held-out items',
    labelNames: ['k', 'mask'],
    registers: [this.registry],
  });

  /** Every series carries the run's id (the dashboard's `run` variable); losses start at 0 by reason. */
  constructor(runId?: string) {
    nodeMetricsInto(this.registry);
    if (runId) this.registry.setDefaultLabels({ run: runId });
    for (const reason of LOSS_KINDS) this.losses.inc({ reason }, 0);
  }

  /** A worker joined: its refused-update counters start at 0, one per reason. */
  workerJoined(worker: string): void {
    for (const reason of REFUSAL_KINDS) this.rejectedUpdates.inc({ reason, worker }, 0);
  }
}

/**
 * tricaps_exchange_bytes_total{direction,peer_kind}: tensor bytes moved by the exchange, every label
 * set present from the start (a panel's rate() sees the first bytes); countExchange feeds it.
 */
function exchangeBytesCounter(registry: Registry): Counter<'direction' | 'peer_kind'> {
  const c = new Counter({
    name: 'tricaps_exchange_bytes_total',
    help: 'Tensor bytes moved by the gradient and weights exchange, by direction and the kind of process at the other end',
    labelNames: ['direction', 'peer_kind'],
    registers: [registry],
  });
  for (const direction of EXCHANGE_DIRECTIONS) for (const peer_kind of PEER_KINDS) c.inc({ direction, peer_kind }, 0);
  return c;
}

export class WorkerMetrics {
  readonly registry = new Registry();
  readonly info = new Gauge({
    name: 'tricaps_info',
    help: 'Constant 1, labelled with what this process is',
    labelNames: ['role', 'run', 'engine', 'device', 'version'],
    registers: [this.registry],
  });
  readonly phase = new Histogram({
    name: 'tricaps_worker_phase_seconds',
    help: 'Time of each phase of this worker step',
    labelNames: ['phase'],
    buckets: STEP_BUCKETS,
    registers: [this.registry],
  });
  readonly steps = new Counter({
    name: 'tricaps_worker_steps_total',
    help: 'Gradients this worker computed and had accepted',
    registers: [this.registry],
  });
  readonly registrations = new Counter({
    name: 'tricaps_worker_registrations_total',
    help: 'Times this worker registered with a coordinator (more than 1: rejoined)',
    registers: [this.registry],
  });
  /** Counts the exchange once attached to the fleet client's meter (countExchange). */
  readonly exchangeBytes = exchangeBytesCounter(this.registry);
  readonly loss = new Gauge({
    name: 'tricaps_worker_loss',
    help: 'Loss of this worker last shards',
    registers: [this.registry],
  });

  constructor() {
    nodeMetricsInto(this.registry);
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** What /healthz reports: ok, or why not (the liveness probe restarts a stalled coordinator). */
export type HealthCheck = () => { ok: true } | { ok: false; reason: string };

/** Serves GET /metrics (and /healthz when a check is given) on the port (0: chosen by the system). */
export async function serveMetrics(
  registry: Registry,
  port: number,
  host = '0.0.0.0',
  health?: HealthCheck,
): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    if (req.method === 'GET' && health && req.url?.split('?')[0] === '/healthz') {
      const h = health();
      res.writeHead(h.ok ? 200 : 503, { 'Content-Type': 'text/plain' });
      res.end(h.ok ? 'ok\n' : `${h.reason}\n`);
      return;
    }
    if (req.method === 'GET' && req.url?.split('?')[0] === '/metrics') {
      registry.metrics().then(
        (text) => {
          res.writeHead(200, { 'Content-Type': registry.contentType });
          res.end(text);
        },
        (err: Error) => {
          res.writeHead(500);
          res.end(err.message);
        },
      );
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found: metrics are at /metrics\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new UsageError(`--metrics-port ${port}: cannot listen (${(err as Error).message})`)),
    );
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

/** Feeds a process's tricaps_exchange_bytes_total from its exchange meter. */
export function countExchange(counter: Counter<'direction' | 'peer_kind'>, meter: ExchangeMeter): void {
  meter.attach((direction, peer_kind, bytes) => counter.inc({ direction, peer_kind }, bytes));
}
