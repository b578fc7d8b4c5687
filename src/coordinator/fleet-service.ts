// The coordinator's gRPC transport: FleetService handlers over FleetCoordinator, plus the standard
// gRPC health service. Streams are read and decoded here (chunk by chunk, against the shapes the
// coordinator expects); every rejection is a gRPC status whose details say what was wrong.
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import {
  FetchWeightsResponse,
  StepAction,
  type FleetServiceServer,
  type PushEmbeddingsRequest,
  type PushGradientsRequest,
  type PushSliceRequest,
  type RunRef,
  type TensorChunk,
} from '../shared/gen/tricaps/v1/fleet.js';
import { decodeTensor, encodeTensor, TensorDecodeError, type EncodedChunk } from '../shared/tensor-codec.js';
import { fromProtoChunk, toProtoChunk, toProtoDType } from '../shared/wire.js';
import { UsageError } from '../shared/errors.js';
import { FastFleetServiceDefinition, PreSerialized, serializeFetchWeights } from '../shared/wire-fast.js';
import { widenFlowControlWindows } from '../shared/http2-window.js';
import { serverCredentials, type FleetSecurity } from '../shared/fleet-security.js';
import { Gate, upload, UploadReader, type GateOptions } from '../shared/stream-service.js';

export { UploadReader } from '../shared/stream-service.js';
import type { Logger } from '../shared/log.js';
import {
  FleetError,
  type FleetCoordinator,
  type FleetErrorCode,
  type RunRefLike,
  type TensorSpec,
} from './fleet-coordinator.js';

export const FLEET_SERVICE_NAME = 'tricaps.v1.FleetService';

const STATUS: Record<FleetErrorCode, grpc.status> = {
  'invalid-argument': grpc.status.INVALID_ARGUMENT,
  'wrong-run': grpc.status.FAILED_PRECONDITION,
  'not-member': grpc.status.NOT_FOUND,
  stale: grpc.status.ABORTED,
  unusable: grpc.status.INVALID_ARGUMENT,
  full: grpc.status.RESOURCE_EXHAUSTED,
  unavailable: grpc.status.UNAVAILABLE,
  finished: grpc.status.OUT_OF_RANGE,
};

function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  if (err instanceof FleetError) return { code: STATUS[err.code], details: err.message };
  if (err instanceof TensorDecodeError) return { code: grpc.status.INVALID_ARGUMENT, details: err.message };
  return { code: grpc.status.INTERNAL, details: `coordinator error: ${(err as Error).message}` };
}

function runOf(ref: RunRef | undefined): RunRefLike | undefined {
  return ref ? { runId: ref.runId, round: ref.round, step: ref.step } : undefined;
}

export interface ServiceGuards extends GateOptions {
  /** An upload stream that has not finished by then is cut (slow senders hold memory). */
  uploadTimeoutMs: number;
}

export const DEFAULT_GUARDS: ServiceGuards = { maxCallsPerPeer: 16, uploadTimeoutMs: 120_000 };

/** Wraps a unary handler: admission, then FleetError and friends become statuses. */
function unary<Req, Res>(
  gate: Gate,
  fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Res | Promise<Res>,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const admitted = gate.admit(call);
    if ('refusal' in admitted) {
      callback(admitted.refusal);
      return;
    }
    Promise.resolve()
      .then(() => fn(call.request, call))
      .then(
        (res) => callback(null, res),
        (err) => callback(toServiceError(err)),
      )
      .finally(admitted.release);
  };
}

export function fleetServiceImpl(coord: FleetCoordinator, guards: ServiceGuards = DEFAULT_GUARDS): FleetServiceServer {
  const gate = new Gate(guards);
  // What a train upload must carry is fixed by the model for the whole run.
  const trainSpecs = new Map(coord.expectedTrainTensors().map((s) => [s.name, s]));
  const trainNames = [...trainSpecs.keys()];
  return {
    register: unary(gate, (req) => {
      const { member, run } = coord.register({
        workerName: req.workerName,
        engine: req.engine,
        device: req.device,
        runId: req.runId,
        peerAddress: req.peerAddress,
      });
      return {
        run,
        workerId: member.id,
        heartbeatIntervalMs: coord.opts.heartbeatIntervalMs,
        configJson: coord.opts.configJson,
        gradientDtype: toProtoDType(coord.opts.gradientDtype),
      };
    }),
    heartbeat: unary(gate, (req) => coord.heartbeat(req.workerId, runOf(req.run))),
    leave: unary(gate, (req) => {
      coord.leave(req.workerId, runOf(req.run), req.reason.slice(0, 500), req.failed);
      return {};
    }),
    nextStep: unary(gate, async (req, call) => {
      const abort = new AbortController();
      call.on('cancelled', () => abort.abort());
      const a = await coord.nextStep(req.workerId, runOf(req.run), abort.signal);
      if (a.action === 'wait')
        return {
          run: a.run,
          action: StepAction.STEP_ACTION_WAIT,
          epoch: 0,
          shards: [],
          weightsVersion: 0,
          ring: undefined,
        };
      if (a.action === 'finish')
        return {
          run: a.run,
          action: StepAction.STEP_ACTION_FINISH,
          epoch: 0,
          shards: [],
          weightsVersion: 0,
          ring: undefined,
        };
      return {
        run: a.run,
        action: a.action === 'train' ? StepAction.STEP_ACTION_TRAIN : StepAction.STEP_ACTION_EMBED,
        epoch: a.epoch,
        shards: a.shards.map((sh) => ({ index: sh.index, imageIds: sh.imageIds, itemIds: sh.itemIds })),
        weightsVersion: a.weightsVersion,
        ring: a.ring
          ? {
              members: a.ring.members.map((m) => ({ workerId: m.id, peerAddress: m.peerAddress })),
              position: a.ring.position,
              length: a.ring.length,
              weightsLength: a.ring.weightsLength,
            }
          : undefined,
      };
    }),
    fetchWeights: (call) => {
      const admitted = gate.admit(call);
      if ('refusal' in admitted) {
        call.emit('error', admitted.refusal);
        return;
      }
      call.once('finish', admitted.release);
      call.once('close', admitted.release);
      let messages: PreSerialized[];
      try {
        const { workerId, sliceOffset, sliceLength } = call.request;
        messages =
          sliceLength > 0
            ? sliceMessages(coord.weightSlice(workerId, runOf(call.request.run), sliceOffset, sliceLength))
            : weightMessages(coord.weightChunks(workerId, runOf(call.request.run)));
      } catch (err) {
        // grpc-js sends the status of a server stream given as an 'error' event.
        admitted.release();
        call.emit('error', toServiceError(err));
        return;
      }
      let i = 0;
      const pump = () => {
        while (i < messages.length) {
          // PreSerialized stands in for the message; the service's serializer passes it through.
          coord.exchange.add('sent', 'worker', messages[i].bytes.byteLength);
          const more = call.write(messages[i++] as unknown as FetchWeightsResponse);
          if (!more) {
            call.once('drain', pump);
            return;
          }
        }
        call.end();
      };
      pump();
    },
    pushGradients: (call, callback) =>
      upload<PushGradientsRequest, NonNullable<PushGradientsRequest['header']>>(
        gate,
        guards.uploadTimeoutMs,
        call,
        callback,
        (h) => {
          coord.checkTrainHeader(h.workerId, runOf(h.run), h.shardIndexes, h.weightsVersion, h.loss);
          return new UploadReader(
            (name) => trainSpecs.get(name),
            (size) => coord.buffers.take(size),
          );
        },
        (h, reader) => {
          const tensors = reader.finish(trainNames, h.tensorCount);
          const { grads, bnStats } = coord.splitTrainTensors(tensors);
          coord.acceptTrain(h.workerId, runOf(h.run)!, h.shardIndexes, h.weightsVersion, {
            triplets: h.contributingTriplets,
            activeTriplets: h.activeTriplets,
            loss: h.loss,
            meanPositiveDistance: h.meanPositiveDistance,
            meanNegativeDistance: h.meanNegativeDistance,
            shards: h.shardIndexes.length,
            grads,
            bnStats,
            dataSeconds: h.dataSeconds,
            computeSeconds: h.computeSeconds,
          });
        },
        (h, reason) => coord.rejectResult(h.workerId, reason),
        (arrays) => coord.buffers.release(arrays),
        (bytes) => coord.exchange.add('received', 'worker', bytes),
        toServiceError,
      ),
    pushSlice: (call, callback) =>
      upload<PushSliceRequest, NonNullable<PushSliceRequest['header']>>(
        gate,
        guards.uploadTimeoutMs,
        call,
        callback,
        (h) => {
          coord.checkResultHeader('train', h.workerId, runOf(h.run), h.shardIndexes, h.weightsVersion);
          return new UploadReader(
            (name) => (name === 'slice' ? { name, shape: [h.length] } : undefined),
            (size) => coord.buffers.take(size),
          );
        },
        (h, reader) => {
          const values = reader.finish(['slice'], 1).get('slice')!;
          coord.acceptSlice(
            h.workerId,
            runOf(h.run)!,
            h.shardIndexes,
            h.weightsVersion,
            { index: h.slice, offset: h.offset, length: h.length },
            values,
            { dataSeconds: h.dataSeconds, computeSeconds: h.computeSeconds },
          );
        },
        (h, reason) => coord.rejectResult(h.workerId, reason),
        undefined,
        (bytes) => coord.exchange.add('received', 'worker', bytes),
        toServiceError,
      ),
    reportPeer: unary(gate, (req) => {
      coord.reportPeer(req.workerId, runOf(req.run), req.peerId, req.reason, req.badData);
      return {};
    }),
    pushEmbeddings: (call, callback) =>
      upload<PushEmbeddingsRequest, NonNullable<PushEmbeddingsRequest['header']>>(
        gate,
        guards.uploadTimeoutMs,
        call,
        callback,
        (h) => {
          coord.checkResultHeader('embed', h.workerId, runOf(h.run), h.shardIndexes, h.weightsVersion);
          const images = coord.embedImagesOf(h.shardIndexes);
          const dim = coord.opts.embeddingDim ?? 0;
          return new UploadReader((name) =>
            name === 'embeddings' && dim > 0 ? { name, shape: [images.length, dim] } : undefined,
          );
        },
        (h, reader) => {
          const embeddings = reader.finish(['embeddings'], 1).get('embeddings')!;
          coord.acceptEmbeddings(h.workerId, runOf(h.run)!, h.shardIndexes, h.weightsVersion, {
            embeddings,
            dim: coord.opts.embeddingDim!,
          });
        },
        (h, reason) => coord.rejectResult(h.workerId, reason),
        undefined,
        (bytes) => coord.exchange.add('received', 'worker', bytes),
        toServiceError,
      ),
  };
}

export interface FleetServer {
  server: grpc.Server;
  health: HealthImplementation;
  /** HOST:PORT actually bound (the port chosen by the system when 0 was asked). */
  address: string;
  port: number;
  shutdown(): Promise<void>;
}

/** Why a bind failed, in one line (grpc-js's message nests the socket errors and their stacks). */
function listenFailure(err: Error): string {
  if (/EADDRINUSE/.test(err.message))
    return 'the port is in use (another coordinator or process has it); choose another port';
  if (/EACCES/.test(err.message))
    return 'permission denied (ports below 1024 need privileges); choose a port above 1024';
  if (/EADDRNOTAVAIL/.test(err.message)) return 'no network interface of this machine has that address';
  return err.message.split('\n')[0];
}

/** Parses HOST:PORT ([v6]:PORT too); the port may be 0 (chosen at bind time). */
export function parseListen(value: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s]+):(\d{1,5})$/.exec(value.trim());
  if (!m || Number(m[2]) > 65_535)
    throw new UsageError(
      `--listen ${value}: expected HOST:PORT, e.g. 0.0.0.0:7070 or 127.0.0.1:0 (port chosen at start)`,
    );
  return { host: m[1], port: Number(m[2]) };
}

/** The FetchWeights messages of one weights version, serialized once (keyed by its chunk list). */
const serializedWeights = new WeakMap<EncodedChunk[], PreSerialized[]>();

function weightMessages(snapshot: { version: number; chunks: EncodedChunk[] }): PreSerialized[] {
  let messages = serializedWeights.get(snapshot.chunks);
  if (!messages) {
    const tensorCount = new Set(snapshot.chunks.map((c) => c.name)).size;
    messages = snapshot.chunks.map(
      (c) =>
        new PreSerialized(
          serializeFetchWeights({ weightsVersion: snapshot.version, tensorCount, chunk: toProtoChunk(c) }),
        ),
    );
    serializedWeights.set(snapshot.chunks, messages);
  }
  return messages;
}

/** A ring member's slice of the weights vector: one tensor "weights" (views of the published array). */
function sliceMessages(slice: { version: number; values: Float32Array }): PreSerialized[] {
  return encodeTensor('weights', slice.values, [slice.values.length], 'float32', undefined, { copy: false }).map(
    (c) =>
      new PreSerialized(
        serializeFetchWeights({ weightsVersion: slice.version, tensorCount: 1, chunk: toProtoChunk(c) }),
      ),
  );
}

export async function serveFleet(
  coord: FleetCoordinator,
  listen: string,
  security: FleetSecurity = {},
  guards: ServiceGuards = DEFAULT_GUARDS,
  log?: Logger,
): Promise<FleetServer> {
  const { host, port } = parseListen(listen);
  // grpc-js writes its own error lines ("E No address added ...") straight to stderr; the failures
  // that matter reach us as errors and are said once, in our words. Its lines go to our debug log.
  if (log) {
    const toDebug = (...args: unknown[]) => log.debug({ grpc: args.map(String).join(' ') }, 'grpc-js');
    grpc.setLogger({ error: toDebug, info: toDebug, debug: toDebug } as unknown as Partial<Console>);
  }
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 8 << 20 });
  // Without a logger (benchmarks, tests of the service alone) the plaintext note is not written.
  const loopback = /^(127\.|localhost$|\[::1\]$)/.test(host);
  const credentials = log
    ? serverCredentials(security, log, loopback)
    : security.tlsCert
      ? serverCredentials(security, { info: () => undefined, warn: () => undefined } as unknown as Logger)
      : grpc.ServerCredentials.createInsecure();
  server.addService(
    FastFleetServiceDefinition,
    fleetServiceImpl(coord, { ...guards, joinToken: security.joinToken, log }),
  );
  const health = new HealthImplementation({ '': 'SERVING', [FLEET_SERVICE_NAME]: 'SERVING' });
  health.addToServer(server);
  const bound = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${port}`, credentials, (err, p) =>
      err ? reject(new UsageError(`cannot listen on ${listen}: ${listenFailure(err)}`)) : resolve(p),
    ),
  );
  widenFlowControlWindows(server);
  return {
    server,
    health,
    address: `${host}:${bound}`,
    port: bound,
    shutdown: () =>
      new Promise<void>((resolve) => {
        health.setStatus('', 'NOT_SERVING');
        health.setStatus(FLEET_SERVICE_NAME, 'NOT_SERVING');
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}
