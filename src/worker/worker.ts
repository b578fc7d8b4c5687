// A fleet worker: registers with the coordinator (retrying with backoff), then loops — ask for work,
// fetch weights when the assignment names another version, load the shard's images from the shared
// data path, compute, upload. It re-registers when the coordinator no longer knows it (dropped, or
// restarted as a new run), exits 0 when the run is over or on SIGTERM (finishing the step in
// progress, or giving back one not yet started), and exits 1 when the coordinator stays unreachable.
import { ownedSlice, packContribution, ringLayout, sliceBounds, type Slice } from '../shared/plan/ring.js';
import { PeerClients, RingInbox, servePeers, type PeerServer } from './peer-link.js';
import {
  allGather,
  expectationOf,
  reduceScatter,
  RingHopError,
  type RingFaults,
  type RingPlan,
} from './ring-exchange.js';
import { processCpuSeconds } from '../shared/stats.js';
import { Worker as Thread } from 'node:worker_threads';
import { hostname } from 'node:os';
import * as tf from '@tensorflow/tfjs-core';
import { z } from 'zod';
import { initEngine, type Engine, type EngineChoice } from '../shared/engine/engine.js';
import { catalogueFingerprint, openTrainingCatalogue } from '../shared/data/open-catalogue.js';
import type { Catalogue } from '../shared/data/catalogue.js';
import { unitCapsules } from '../shared/eval/evaluate.js';
import { FleetJobSchema, type FleetJob } from '../shared/fleet-job.js';
import { StepAction, WireDType, type NextStepResponse, type RunRef } from '../shared/gen/tricaps/v1/fleet.js';
import type { Logger } from '../shared/log.js';
import { buildArchitecture } from '../shared/model/architecture.js';
import { createModelState, tensorFromHost, type ModelState } from '../shared/model/params.js';
import { UsageError } from '../shared/errors.js';
import { abortableSleep, Backoff, callFailure, FleetClient, holdThread, retrying } from './fleet-client.js';
import type { HeartbeatConnection, HeartbeatEvent, HeartbeatStart } from './heartbeat-thread.js';
import { computeShardsGradient, type ShardsGradient } from '../shared/train/shard-gradients.js';
import { countExchange, type WorkerMetrics } from '../shared/metrics.js';
import { assertInside } from '../shared/paths.js';
import type { FleetSecurity } from '../shared/fleet-security.js';
import { TRICAPS_VERSION } from '../shared/version.js';

export interface WorkerOptions {
  coordinator: string;
  engine: EngineChoice;
  name: string;
  /** Only join this run (empty: whichever run the coordinator has). */
  runId: string;
  /** Give up after the coordinator has been unreachable this long. */
  reconnectTimeoutMs: number;
  /** Per-call deadline for uploads and downloads. */
  transferTimeoutMs: number;
  security: FleetSecurity;
  /** When set, the data root the coordinator names must lie inside it. */
  dataRoot?: string;
  /**
   * Each assignment's data and compute take at least this long (the rest is waited out): emulates a
   * slower device in benchmarks and soaks, so that what they measure is the fleet, not this CPU.
   */
  simulateComputeMs?: number;
  /**
   * Benchmarks of the fleet alone: load no images and compute nothing; each assignment "takes"
   * simulateComputeMs and uploads a gradient of the model's shapes (small constant values) and
   * neutral BatchNorm statistics, so the exchange is measured at full size.
   */
  syntheticGradients?: boolean;
  /** Serve ring hops here (HOST:PORT; port 0: chosen at start); absent: this worker joins no ring. */
  peerListen?: string;
  /** The address peers reach this worker at (default: the bound --peer-listen address). */
  peerAdvertise?: string;
  /** A ring hop not sent or received by then fails the ring (the coordinator is told). */
  ringHopTimeoutMs?: number;
  /** Test hooks that inject ring faults into a real process. */
  ringFaults?: RingFaults;
  /**
   * Test hook: after each assignment's compute, hold the main thread this long more, synchronously
   * (as a long compute on a CPU engine does), counted as compute time.
   */
  blockMainThreadMs?: number;
  /** Test hook: the first gradient of step `fromStep` or later is multiplied by `factor` (a diverging worker). */
  scaleOneGradient?: { fromStep: number; factor: number };
}

/** How long a worker waits for its heartbeat thread to load before registering anyway. */
const HEARTBEAT_READY_MS = 10_000;

/** Set by the process's SIGTERM handler. */
export interface StopSignal {
  readonly stopping: boolean;
  readonly signal: AbortSignal;
}

interface Session {
  workerId: string;
  run: RunRef;
  job: FleetJob;
  gradientDtype: 'float32' | 'float16';
  heartbeat: Thread;
  events: HeartbeatEvent[];
}

interface Loaded {
  key: string;
  model: ModelState;
  catalogue: Catalogue;
  shapes: Map<string, number[]>;
  version: number;
  /** The weights of `version` as one vector (parameters, then buffers): a ring member forwards slices of it. */
  flat: Float32Array | undefined;
}

export class FleetWorker {
  private readonly client: FleetClient;
  private engine!: Engine;
  private loaded: Loaded | undefined;
  private readonly backoff: Backoff;
  stepsDone = 0;
  /** The coordinator said the run is over. */
  private runOver = false;
  /** Ring links (--peer-listen): hops in, hops out, and the ring open now (aborted on a new round). */
  private readonly inbox = new RingInbox();
  private readonly peers: PeerClients;
  private peerServer: PeerServer | undefined;
  private openRing: { step: number; round: number; abort: AbortController } | undefined;
  private packed: Float32Array | undefined;
  /** The vector a ring's weights are gathered into (swapped with the loaded weights when complete). */
  private gathering: Float32Array | undefined;
  /** How long this step's weights took to gather (for the step's debug line). */
  private gatherMs = 0;

  constructor(
    private readonly opts: WorkerOptions,
    private readonly stop: StopSignal,
    private readonly log: Logger,
    private readonly metrics?: WorkerMetrics,
  ) {
    this.client = new FleetClient(opts.coordinator, opts.security);
    this.scaleOneGradient = opts.scaleOneGradient;
    this.peers = new PeerClients(opts.security, this.client.exchange);
    if (metrics) countExchange(metrics.exchangeBytes, this.client.exchange);
    const where = opts.coordinator;
    this.backoff = new Backoff({
      giveUpAfterMs: opts.reconnectTimeoutMs,
      signal: stop.signal,
      onRetry: (f, gone, delay) => {
        if (delay >= 1600 || gone === 0) {
          log.warn(
            { coordinator: where, details: f.details },
            `coordinator ${where} unreachable (${f.status}); retrying`,
          );
        }
      },
      onGiveUp: (f, gone) =>
        log.error(
          { coordinator: where, seconds: gone / 1000 },
          `the coordinator at ${where} has been unreachable for ${(gone / 1000).toFixed(0)} s (${f.details}); giving up`,
        ),
    });
  }

  /** Runs until the run is over (0), SIGTERM (0) or the coordinator is gone for good (1). */
  async run(): Promise<number> {
    this.startHeartbeatThread(); // warms up while the engine starts
    this.engine = await initEngine(this.opts.engine, this.log);
    if (this.opts.peerListen) {
      this.peerServer = await servePeers(
        this.opts.peerListen,
        this.inbox,
        this.opts.security,
        this.log,
        this.client.exchange,
      );
      const advertised = this.opts.peerAdvertise ?? this.peerServer.address;
      if (/^(0\.0\.0\.0|\[::\]):/.test(advertised))
        throw new UsageError(
          `--peer-listen ${this.opts.peerListen} listens on every interface: say where peers reach this worker with --peer-advertise HOST:PORT`,
        );
      this.peerAddress = advertised;
      this.log.info({ peerAddress: advertised }, `ring peers reach this worker at ${advertised}`);
    }
    try {
      for (;;) {
        if (this.stop.stopping) return 0;
        const session = await this.register();
        if (!session) return this.stop.stopping || this.runOver ? 0 : 1;
        const outcome = await this.serve(session).finally(() => void session.heartbeat.terminate());
        if (outcome !== 'reregister') return outcome === 'done' ? 0 : 1;
      }
    } finally {
      await this.warmHeartbeat?.thread.terminate();
      this.warmHeartbeat = undefined;
      this.client.close();
      this.peers.close();
      await this.peerServer?.shutdown();
      this.loaded?.model.dispose();
    }
  }

  private peerAddress = '';

  /**
   * The membership moved on: a ring of an older round that is no longer the coordinator's open ring
   * was dropped (a member was lost) and can never complete.
   */
  private onRound(round: number, ringStep: number, ringRound: number): void {
    const ring = this.openRing;
    if (ring && round > ring.round && !(ringStep === ring.step && ringRound === ring.round))
      ring.abort.abort(new Error(`round ${round} began and the ring was re-planned`));
  }

  /** Test hook (WorkerOptions.scaleOneGradient), spent by the one gradient it scales. */
  private scaleOneGradient: WorkerOptions['scaleOneGradient'];

  /** A heartbeat thread started ahead of the registration that will use it. */
  private warmHeartbeat: { thread: Thread; failure: Promise<Error>; ready: Promise<void> } | undefined;

  private startHeartbeatThread(): void {
    if (this.warmHeartbeat) return;
    const thread = new Thread(new URL('./heartbeat-thread.js', import.meta.url), {
      workerData: { address: this.opts.coordinator, security: this.opts.security } satisfies HeartbeatConnection,
    });
    // An error before or after the thread is handed to a session is that session's to report.
    const failure = new Promise<Error>((resolve) => thread.once('error', resolve));
    // A thread that fails never gets ready: the registration need not wait for it.
    const ready = new Promise<void>((resolve) => {
      thread.on('message', (e: HeartbeatEvent) => e.type === 'ready' && resolve());
      void failure.then(() => resolve());
    });
    thread.unref();
    this.warmHeartbeat = { thread, failure, ready };
  }

  /**
   * Registers only once the heartbeat thread can beat: the coordinator counts silence from the
   * registration. Waits at most HEARTBEAT_READY_MS, then registers anyway and says so.
   */
  private async heartbeatReady(): Promise<void> {
    const warm = this.warmHeartbeat!;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), HEARTBEAT_READY_MS)));
    const outcome = await Promise.race([warm.ready, late]).finally(() => clearTimeout(timer));
    if (outcome === 'late')
      this.log.warn(
        { waitedMs: HEARTBEAT_READY_MS },
        `the heartbeat thread is not ready after ${HEARTBEAT_READY_MS / 1000} s; registering anyway (the coordinator may find this worker silent)`,
      );
  }

  /** The warm thread register() started, for the membership it got (the next register() starts another). */
  private takeHeartbeatThread(): { thread: Thread; failure: Promise<Error> } {
    const taken = this.warmHeartbeat!;
    this.warmHeartbeat = undefined;
    return taken;
  }

  private async register(): Promise<Session | undefined> {
    this.startHeartbeatThread();
    await this.heartbeatReady();
    for (;;) {
      if (this.stop.stopping) return undefined;
      try {
        const res = await this.client.register(
          {
            workerName: this.opts.name,
            engine: this.engine.name,
            device: this.engine.device,
            runId: this.opts.runId,
            peerAddress: this.peerAddress,
          },
          10_000,
        );
        this.backoff.succeeded();
        let job: FleetJob;
        try {
          job = FleetJobSchema.parse(JSON.parse(res.configJson));
        } catch (err) {
          throw new UsageError(
            `the coordinator's job configuration is not one this worker understands (${err instanceof z.ZodError ? err.issues[0]?.message : (err as Error).message}); run the same tricaps version on both sides`,
          );
        }
        // Heartbeats start at once: preparing the model and data may take longer than the timeout.
        const { thread: heartbeat, failure: heartbeatFailure } = this.takeHeartbeatThread();
        heartbeat.postMessage({
          type: 'start',
          run: res.run!,
          workerId: res.workerId,
          intervalMs: res.heartbeatIntervalMs,
        } satisfies HeartbeatStart);
        const session: Session = {
          workerId: res.workerId,
          run: res.run!,
          job,
          gradientDtype: res.gradientDtype === WireDType.WIRE_D_TYPE_FLOAT16 ? 'float16' : 'float32',
          heartbeat,
          events: [],
        };
        heartbeat.on('message', (e: HeartbeatEvent) => {
          if (e.type === 'ready') return;
          if (e.type === 'round') return this.onRound(e.round, e.ringStep, e.ringRound);
          // Not a member any more (a restarted coordinator), or the run is over: no ring of ours
          // can complete.
          this.openRing?.abort.abort(
            new Error(e.type === 'stop' ? 'the run is over' : 'the coordinator no longer knows this worker'),
          );
          session.events.push(e);
        });
        this.inbox.onBadData = (from, reason) => {
          this.log.warn({ peer: from, reason }, `ring peer ${from} sent bad data (${reason}); telling the coordinator`);
          void this.client
            .reportPeer(session.run, session.workerId, from, reason, true, 5000)
            .catch((err) => this.log.warn({ err: (err as Error).message }, 'could not report the ring peer'));
        };
        void heartbeatFailure.then((err) =>
          session.events.push({ type: 'gone', details: `heartbeat thread failed: ${err.message}` }),
        );
        try {
          await this.prepare(res.run!.runId, job);
          // Version numbers are per coordinator process (a resumed one counts from its checkpoint):
          // after registering, weights are always fetched afresh.
          this.loaded!.version = -1;
        } catch (err) {
          await this.leave(session, `cannot prepare: ${(err as Error).message}`);
          await heartbeat.terminate();
          throw err;
        }
        this.log.info(
          { worker: res.workerId, run: res.run!.runId, coordinator: this.opts.coordinator, engine: this.engine.name },
          `joined run ${res.run!.runId} as ${res.workerId}`,
        );
        // Every series carries the run from now on (the dashboard's `run` variable).
        this.metrics?.registry.setDefaultLabels({ run: res.run!.runId });
        this.metrics?.registrations.inc();
        this.metrics?.info.reset();
        this.metrics?.info.set(
          {
            role: 'worker',
            run: res.run!.runId,
            engine: this.engine.name,
            device: this.engine.device,
            version: TRICAPS_VERSION,
          },
          1,
        );
        return session;
      } catch (err) {
        const failure = callFailure(err);
        if (!failure) throw err;
        if (failure.outcome === 'over') {
          this.log.info({ details: failure.details }, `${failure.details}; nothing to do`);
          this.runOver = true;
          return undefined;
        }
        if (failure.outcome === 'refused' || (failure.outcome === 'wrong-run' && this.opts.runId)) {
          throw new UsageError(`coordinator ${this.opts.coordinator} refused this worker: ${failure.details}`);
        }
        if (failure.outcome === 'full')
          this.log.warn({ details: failure.details }, `the run is full (${failure.details}); retrying`);
        else if (!this.backoff.failed(failure)) return undefined;
        await this.backoff.wait();
      }
    }
  }

  /** Builds (or keeps) the model and catalogue for a job, checking the data matches. */
  private async prepare(runId: string, job: FleetJob): Promise<void> {
    const key = JSON.stringify([runId, job.train.model, job.train.data]);
    if (this.loaded?.key === key) return;
    this.loaded?.model.dispose();
    this.loaded = undefined;
    if (this.opts.dataRoot && job.train.data.root) assertInside(this.opts.dataRoot, job.train.data.root, '--data-root');
    const catalogue = await openTrainingCatalogue(job.train.data);
    assertSameCatalogue(catalogueFingerprint(catalogue), job.catalogue);
    const arch = buildArchitecture(job.train.model);
    const model = createModelState(arch, job.train.seed);
    this.loaded = {
      key,
      model,
      catalogue,
      shapes: new Map(arch.params.map((p) => [p.name, p.shape])),
      version: -1,
      flat: undefined,
    };
  }

  private async serve(s: Session): Promise<'done' | 'reregister' | 'unreachable'> {
    for (;;) {
      const events = s.events.splice(0);
      if (events.some((e) => e.type === 'stop')) return 'done';
      const gone = events.find((e) => e.type === 'gone');
      if (gone?.type === 'gone') {
        this.log.warn(
          { details: gone.details },
          `the coordinator no longer knows this worker (${gone.details}); registering again`,
        );
        return 'reregister';
      }
      if (this.stop.stopping) {
        await this.leave(s, 'SIGTERM');
        return 'done';
      }
      let next: NextStepResponse;
      try {
        next = await retrying(() => this.client.nextStep(s.run, s.workerId, 30_000, this.stop.signal), this.backoff);
        this.backoff.succeeded();
      } catch (err) {
        const verdict = await this.onCallError(err);
        if (verdict === 'retry') continue;
        return verdict;
      }
      s.run = next.run ?? s.run;
      s.heartbeat.postMessage({ type: 'run', run: s.run });
      if (next.action === StepAction.STEP_ACTION_FINISH) {
        const moved = this.client.exchange.total();
        this.log.info(
          {
            steps: this.stepsDone,
            bytes_sent: moved.sent,
            bytes_received: moved.received,
            cpu_s: processCpuSeconds(),
          },
          `run ${s.run.runId} is over after ${this.stepsDone} steps here`,
        );
        return 'done';
      }
      if (next.action !== StepAction.STEP_ACTION_TRAIN && next.action !== StepAction.STEP_ACTION_EMBED) continue;
      if (this.stop.stopping) {
        // Not started: give the shards back rather than finish them.
        await this.leave(s, `SIGTERM before step ${next.run!.step}`);
        return 'done';
      }
      try {
        await this.work(s, next);
        this.backoff.succeeded();
      } catch (err) {
        if (err instanceof UsageError) {
          // This worker cannot compute its shards (an image it cannot read, say): tell the
          // coordinator why before leaving, so it can name the cause and re-plan or stop.
          this.log.error(
            { step: next.run?.step, err: err.message },
            `cannot compute step ${next.run?.step}: ${err.message}`,
          );
          await this.client.leave(s.run, s.workerId, err.message, 3000, true).catch(() => undefined);
          throw err;
        }
        const verdict = await this.onCallError(err);
        if (verdict === 'retry') continue;
        return verdict;
      }
    }
  }

  private async work(s: Session, next: NextStepResponse): Promise<void> {
    const loaded = this.loaded!;
    const run = next.run!;
    // A ring is opened before anything else: a faster predecessor's first hop may come meanwhile.
    const ringPlan =
      next.action === StepAction.STEP_ACTION_TRAIN && next.ring && next.ring.members.length >= 2
        ? { run, workerId: s.workerId, members: next.ring.members, position: next.ring.position }
        : undefined;
    if (!ringPlan) return this.workCentrally(s, next, loaded);
    if (!this.peerServer) throw new Error('the coordinator planned a ring for a worker without --peer-listen');
    this.inbox.open(expectationOf(ringPlan, next.ring!.weightsLength, next.ring!.length));
    this.openRing = { step: run.step, round: run.round, abort: new AbortController() };
    try {
      if (!(await this.gatherWeights(s, next, ringPlan, loaded))) return;
      const g = await this.computeTrain(s, next, loaded);
      await this.reduceOverRing(s, next, ringPlan, g, loaded);
    } finally {
      this.inbox.close();
      this.openRing = undefined;
    }
  }

  private async workCentrally(s: Session, next: NextStepResponse, loaded: Loaded): Promise<void> {
    if (loaded.version !== next.weightsVersion) {
      const t0 = performance.now();
      // Each tensor decodes straight into its place in the weights vector, which is not the loaded
      // version's any more until the download completes (a failed one leaves no torn vector behind).
      const flat = loaded.flat ?? new Float32Array(weightsLength(loaded));
      loaded.flat = undefined;
      const into = new Map<string, Float32Array>();
      let at = 0;
      for (const [name, v] of [...loaded.model.trainable, ...loaded.model.buffers]) {
        into.set(name, flat.subarray(at, at + v.size));
        at += v.size;
      }
      const { version } = await retrying(
        () => this.client.fetchWeights(s.run, s.workerId, loaded.shapes, this.opts.transferTimeoutMs, into),
        this.backoff,
      );
      loaded.flat = flat;
      assignWeights(loaded.model, flat);
      loaded.version = version;
      this.metrics?.phase.observe({ phase: 'download' }, (performance.now() - t0) / 1000);
      if (version !== next.weightsVersion) return; // the coordinator moved on meanwhile: ask again
    }
    const run = next.run!;
    const units = next.shards.map((sh) => sh.index);
    if (next.action === StepAction.STEP_ACTION_EMBED) {
      const imageIds = next.shards.flatMap((sh) => sh.imageIds);
      const embeddings = await this.embed(imageIds);
      const res = await this.client.pushEmbeddings(
        { run, workerId: s.workerId, shardIndexes: units, weightsVersion: loaded.version },
        embeddings.values,
        [imageIds.length, embeddings.dim],
        this.opts.transferTimeoutMs,
      );
      this.log.debug({ step: run.step, images: imageIds.length, accepted: res.accepted }, 'embeddings sent');
      return;
    }
    const g = await this.computeTrain(s, next, loaded);
    const scale = this.scaleOneGradient;
    if (scale && run.step >= scale.fromStep) {
      for (const values of g.grads.values()) for (let i = 0; i < values.length; i++) values[i] *= scale.factor;
      this.scaleOneGradient = undefined;
    }
    const tensors: [string, Float32Array, number[]][] = [];
    for (const [name, values] of g.grads) tensors.push([name, values, loaded.shapes.get(name)!]);
    for (const [name, values] of g.bnStats) tensors.push([name, values, loaded.shapes.get(name)!]);
    const header = {
      run,
      workerId: s.workerId,
      contributingTriplets: g.triplets,
      activeTriplets: g.activeTriplets,
      loss: g.loss,
      tensorCount: tensors.length,
      shardIndexes: units,
      weightsVersion: loaded.version,
      dataSeconds: g.dataSeconds,
      computeSeconds: g.computeSeconds,
      meanPositiveDistance: g.meanPositiveDistance,
      meanNegativeDistance: g.meanNegativeDistance,
    };
    const t0 = performance.now();
    await this.client.pushGradients(header, tensors, s.gradientDtype, this.opts.transferTimeoutMs);
    this.stepsDone += 1;
    if (this.metrics) {
      this.metrics.phase.observe({ phase: 'upload' }, (performance.now() - t0) / 1000);
      this.metrics.phase.observe({ phase: 'data' }, g.dataSeconds);
      this.metrics.phase.observe({ phase: 'compute' }, g.computeSeconds);
      this.metrics.steps.inc();
      this.metrics.loss.set(g.loss);
    }
    this.log.debug(
      {
        step: run.step,
        round: run.round,
        shards: units,
        loss: g.loss,
        triplets: g.triplets,
        compute_s: g.computeSeconds,
        cpu_s: processCpuSeconds(),
      },
      `step ${run.step} shards [${units}] loss ${g.loss.toFixed(4)}`,
    );
  }

  /** The shards' gradient (or a synthetic one), padded to --simulate-compute-ms. */
  private async computeTrain(s: Session, next: NextStepResponse, loaded: Loaded): Promise<ShardsGradient> {
    const g = this.opts.syntheticGradients
      ? syntheticGradient(loaded.model, next.shards.length)
      : await computeShardsGradient(
          next.shards.map((sh) => ({ index: sh.index, imageIds: sh.imageIds, itemIds: sh.itemIds })),
          {
            model: loaded.model,
            catalogue: loaded.catalogue,
            cfg: s.job.train,
            conv: this.engine.conv,
            step: next.run!.step,
            epoch: next.epoch,
          },
        );
    if (this.opts.blockMainThreadMs) {
      const t0 = performance.now();
      holdThread(this.opts.blockMainThreadMs);
      g.computeSeconds += (performance.now() - t0) / 1000;
    }
    const padMs = (this.opts.simulateComputeMs ?? 0) - (g.dataSeconds + g.computeSeconds) * 1000;
    if (padMs > 0) {
      await abortableSleep(padMs, this.stop.signal);
      g.computeSeconds += padMs / 1000;
    }
    return g;
  }

  /**
   * The step's weights over the ring: this member's slice from the coordinator (or from the weights
   * it holds, when they are the step's already), the rest from its peers. False: the ring failed
   * or was abandoned (said and reported); the worker asks for work again.
   */
  private async gatherWeights(s: Session, next: NextStepResponse, plan: RingPlan, loaded: Loaded): Promise<boolean> {
    const length = weightsLength(loaded);
    if (length !== next.ring!.weightsLength)
      throw new UsageError(
        `the coordinator's weights vector has ${next.ring!.weightsLength} values, this worker's model ${length}; run the same tricaps version and model on both sides`,
      );
    const t0 = performance.now();
    const target = this.gathering?.length === length ? this.gathering : new Float32Array(length);
    const own = sliceBounds(length, plan.members.length)[ownedSlice(plan.position, plan.members.length)];
    const ownValues = target.subarray(own.offset, own.offset + own.length);
    try {
      if (loaded.version === next.weightsVersion && loaded.flat) {
        ownValues.set(loaded.flat.subarray(own.offset, own.offset + own.length));
      } else {
        const version = await retrying(
          () => this.client.fetchWeightSlice(s.run, s.workerId, own.offset, ownValues, this.opts.transferTimeoutMs),
          this.backoff,
        );
        if (version !== next.weightsVersion) {
          this.log.info(
            { step: plan.run.step, version, wanted: next.weightsVersion },
            `the coordinator moved on to weights version ${version} before this ring gathered ${next.weightsVersion}`,
          );
          return false;
        }
      }
      await allGather(plan, target, this.inbox, this.peers, this.ringHopOptions());
    } catch (err) {
      await this.ringFailed(s, plan.run, err);
      return false;
    }
    this.gathering = loaded.flat;
    loaded.flat = target;
    if (loaded.version !== next.weightsVersion) assignWeights(loaded.model, target);
    loaded.version = next.weightsVersion;
    this.gatherMs = performance.now() - t0;
    this.metrics?.phase.observe({ phase: 'download' }, this.gatherMs / 1000);
    return true;
  }

  private ringHopOptions(): { hopTimeoutMs: number; signal: AbortSignal } {
    return {
      hopTimeoutMs: this.opts.ringHopTimeoutMs ?? 60_000,
      signal: AbortSignal.any([this.openRing!.abort.signal, this.stop.signal]),
    };
  }

  /**
   * A ring that failed (a peer unreachable or silent, the round moved on) is left: the coordinator
   * re-plans the step over the members left, and this worker asks for work again. A peer to blame
   * is reported.
   */
  private async ringFailed(s: Session, run: RunRef, err: unknown): Promise<void> {
    if (this.openRing?.abort.signal.aborted) {
      const why = (this.openRing.abort.signal.reason as Error | undefined)?.message ?? 'aborted';
      this.log.info(
        { step: run.step, round: run.round },
        `ring of step ${run.step} round ${run.round} abandoned: ${why}`,
      );
      return;
    }
    if (this.stop.stopping) return;
    const peer = err instanceof RingHopError ? err.peer : undefined;
    this.log.warn(
      { step: run.step, round: run.round, peer },
      `ring of step ${run.step} failed: ${(err as Error).message}`,
    );
    if (peer)
      await this.client.reportPeer(s.run, s.workerId, peer, (err as Error).message, false, 5000).catch(() => undefined);
  }

  /**
   * This member's part of a ring step: pack, reduce-scatter with its peers, upload the owned slice.
   * A ring that fails (a peer unreachable or silent, the round moved on) is left: the coordinator
   * re-plans the step over the members left, and this worker asks for work again.
   */
  private async reduceOverRing(
    s: Session,
    next: NextStepResponse,
    plan: RingPlan,
    g: ShardsGradient,
    loaded: Loaded,
  ): Promise<void> {
    const params = loaded.model.arch.params;
    const slots = (trainable: boolean) =>
      params
        .filter((p) => p.trainable === trainable)
        .map((p) => ({ name: p.name, size: p.shape.reduce((a, b) => a * b, 1) }));
    const layout = ringLayout(slots(true), slots(false));
    if (layout.length !== next.ring!.length)
      throw new UsageError(
        `the coordinator's ring vector has ${next.ring!.length} values, this worker's model ${layout.length}; run the same tricaps version and model on both sides`,
      );
    this.packed = packContribution(layout, g, this.packed);
    const run = next.run!;
    const t0 = performance.now();
    let owned: { slice: Slice; values: Float32Array };
    try {
      owned = await reduceScatter(plan, this.packed, this.inbox, this.peers, {
        dtype: s.gradientDtype,
        ...this.ringHopOptions(),
        faults: this.opts.ringFaults && {
          ...this.opts.ringFaults,
          onHold: () =>
            this.log.info(
              { step: run.step, round: run.round },
              `holding the ring of step ${run.step} round ${run.round} for ${this.opts.ringFaults!.holdAfterFirstHopMs} ms (TRICAPS_TEST_RING_HOLD_MS)`,
            ),
        },
      });
    } catch (err) {
      await this.ringFailed(s, run, err);
      return;
    }
    const t1 = performance.now();
    this.metrics?.phase.observe({ phase: 'ring' }, (t1 - t0) / 1000);
    await this.client.pushSlice(
      {
        run,
        workerId: s.workerId,
        shardIndexes: next.shards.map((sh) => sh.index),
        weightsVersion: loaded.version,
        slice: owned.slice.index,
        offset: owned.slice.offset,
        length: owned.values.length,
        dataSeconds: g.dataSeconds,
        computeSeconds: g.computeSeconds,
      },
      owned.values,
      s.gradientDtype,
      this.opts.transferTimeoutMs,
    );
    this.stepsDone += 1;
    const t2 = performance.now();
    this.metrics?.phase.observe({ phase: 'upload' }, (t2 - t1) / 1000);
    this.metrics?.steps.inc();
    this.log.debug(
      {
        step: run.step,
        round: run.round,
        slice: owned.slice.index,
        loss: g.loss,
        cpu_s: processCpuSeconds(),
        gather_ms: Math.round(this.gatherMs),
        reduce_ms: Math.round(t1 - t0),
        upload_ms: Math.round(t2 - t1),
      },
      `step ${run.step} shards [${next.shards.map((sh) => sh.index)}] loss ${g.loss.toFixed(4)} (ring slice ${owned.slice.index})`,
    );
  }

  private async embed(imageIds: number[]): Promise<{ values: Float32Array; dim: number }> {
    const { model, catalogue } = this.loaded!;
    const u = await unitCapsules(
      model,
      catalogue,
      imageIds.map((id) => catalogue.images[id]),
      { batchSize: 32, conv: this.engine.conv },
    );
    return { values: u.unit, dim: u.categories * u.dim };
  }

  private async leave(s: Session, reason: string): Promise<void> {
    try {
      await this.client.leave(s.run, s.workerId, reason, 3000);
      this.log.info({ worker: s.workerId, reason }, `left run ${s.run.runId} (${reason})`);
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not tell the coordinator this worker is leaving');
    }
  }

  private async onCallError(err: unknown): Promise<'retry' | 'reregister' | 'unreachable' | 'done'> {
    const failure = callFailure(err);
    if (!failure) throw err;
    switch (failure.outcome) {
      case 'over':
        this.log.info({ details: failure.details }, failure.details);
        return 'done';
      case 'gone':
      case 'wrong-run':
        this.log.warn({ code: failure.status, details: failure.details }, `registering again: ${failure.details}`);
        return 'reregister';
      case 'stale':
        this.log.info({ details: failure.details }, `result not used: ${failure.details}`);
        return 'retry';
      case 'rejected':
        this.log.error(
          { details: failure.details },
          `the coordinator rejected this worker's result: ${failure.details}`,
        );
        return 'reregister';
      case 'cancelled':
        if (this.stop.stopping) return 'retry'; // our own cancel on SIGTERM
        break;
      case 'unreachable':
        break;
      default:
        throw err;
    }
    if (!this.backoff.failed(failure)) return 'unreachable';
    await this.backoff.wait();
    return 'retry';
  }
}

/** Workers load images by index: their catalogue must be the coordinator's. */
export function assertSameCatalogue(mine: FleetJob['catalogue'], theirs: FleetJob['catalogue']): void {
  if (mine.images !== theirs.images || mine.categories !== theirs.categories) {
    throw new UsageError(
      `the data this worker sees (${mine.name}: ${mine.images} images, ${mine.categories} categories) differs from the coordinator's (${theirs.name}: ${theirs.images} images, ${theirs.categories} categories); mount the same --data path on every machine`,
    );
  }
  if (mine.labels !== theirs.labels) {
    throw new UsageError(
      `the data this worker sees (${mine.name}) labels its images differently from the coordinator's (${theirs.name}): the same counts (${mine.images} images, ${mine.categories} categories) but other items, categories or splits (labels digest ${mine.labels} here, ${theirs.labels} there); mount the same --data path on every machine`,
    );
  }
}

/** Values in a model's weights vector (parameters, then buffers). */
function weightsLength(loaded: Loaded): number {
  let n = 0;
  for (const [, v] of [...loaded.model.trainable, ...loaded.model.buffers]) n += v.size;
  return n;
}

/** The model's variables from a weights vector (which is written again next step). */
function assignWeights(model: ModelState, flat: Float32Array): void {
  let at = 0;
  for (const [, v] of [...model.trainable, ...model.buffers]) {
    const t = tensorFromHost(flat.subarray(at, at + v.size), v.shape);
    v.assign(t);
    t.dispose();
    at += v.size;
  }
}

export function defaultWorkerName(): string {
  return `${hostname()}-${process.pid}`;
}

const syntheticArrays = new WeakMap<
  ModelState,
  { grads: Map<string, Float32Array>; bnStats: Map<string, Float32Array> }
>();

/** A full-size gradient that costs nothing to compute (--synthetic-gradients); arrays made once. */
function syntheticGradient(model: ModelState, shards: number): ShardsGradient {
  let arrays = syntheticArrays.get(model);
  if (!arrays) {
    arrays = {
      grads: new Map([...model.trainable].map(([n, v]) => [n, new Float32Array(v.size).fill(1e-4)])),
      // Moving mean 0 and variance 1: statistics the coordinator accepts and that change nothing much.
      bnStats: new Map(
        [...model.buffers].map(([n, v]) => [n, new Float32Array(v.size).fill(/variance/i.test(n) ? 1 : 0)]),
      ),
    };
    syntheticArrays.set(model, arrays);
  }
  const triplets = 8 * shards;
  return {
    triplets,
    activeTriplets: triplets,
    loss: 1,
    meanPositiveDistance: 0.5,
    meanNegativeDistance: 1,
    grads: arrays.grads,
    bnStats: arrays.bnStats,
    shards,
    dataSeconds: 0,
    computeSeconds: 0,
  };
}
