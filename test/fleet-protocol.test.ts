// Messages a coordinator must refuse without disturbing its run: another run's worker, unknown or
// removed workers, stale steps, malformed uploads, a full fleet. A raw gRPC client plays the rogue
// against a real coordinator process that trains with a real worker process.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import {
  FleetServiceClient,
  StepAction,
  WireDType,
  type PushGradientsRequest,
  type RunRef,
} from '../src/shared/gen/tricaps/v1/fleet.js';
import { Fleet, listeningAddress, TINY } from './fleet-harness.js';

const fleet = new Fleet();
afterEach(() => fleet.cleanup());

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;

function call<Req, Res>(fn: Unary<Req, Res>, client: FleetServiceClient, req: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
}

function push(client: FleetServiceClient, messages: PushGradientsRequest[]): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const stream = client.pushGradients(new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
    for (const m of messages) stream.write(m);
    stream.end();
  });
}

const status = (code: grpc.status, details: RegExp) =>
  expect.objectContaining({ code, details: expect.stringMatching(details) });

const clients: grpc.Client[] = [];
afterAll(() => clients.forEach((c) => c.close()));

describe('the coordinator refuses bad messages and keeps training', () => {
  it('rejects foreign, unknown, stale and malformed messages; a rogue member is removed and its shard re-planned', async () => {
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '60',
      '--shards',
      '2',
      '--min-workers',
      '1',
      '--max-workers',
      '2',
      '--heartbeat-timeout',
      '8000',
      '--run-id',
      'proto-test-run',
    ]);
    const address = await listeningAddress(coord);
    const raw = new FleetServiceClient(address, grpc.credentials.createInsecure());
    clients.push(raw);
    const run = (step: number, round = 0): RunRef => ({ runId: 'proto-test-run', round, step });

    // The standard health service answers.
    const healthDef = grpc.loadPackageDefinition(
      protoLoader.loadSync(healthProtoPath, { enums: String }),
    ) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
    const health = new healthDef.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
    clients.push(health);
    const checked = await new Promise<{ status: string }>((resolve, reject) =>
      (health as unknown as { check: (r: object, cb: (e: Error | null, r: { status: string }) => void) => void }).check(
        { service: 'tricaps.v1.FleetService' },
        (e, r) => (e ? reject(e) : resolve(r)),
      ),
    );
    expect(checked.status).toBe('SERVING');

    // A worker of another run, and messages of another run.
    await expect(
      call(raw.register, raw, { workerName: 'x', engine: 'wasm', device: 'cpu', runId: 'other-run' }),
    ).rejects.toEqual(
      status(grpc.status.FAILED_PRECONDITION, /belongs to run other-run; this coordinator runs proto-test-run/),
    );
    await expect(
      call(raw.heartbeat, raw, { run: { runId: 'other-run', round: 0, step: 0 }, workerId: 'w1' }),
    ).rejects.toEqual(status(grpc.status.FAILED_PRECONDITION, /message for run other-run/));
    await expect(call(raw.heartbeat, raw, { run: undefined, workerId: 'w1' })).rejects.toEqual(
      status(grpc.status.INVALID_ARGUMENT, /without a run reference/),
    );
    await expect(call(raw.heartbeat, raw, { run: run(0), workerId: 'w99' })).rejects.toEqual(
      status(grpc.status.NOT_FOUND, /worker w99 is not a member of run proto-test-run; register again/),
    );
    const foreign = fleet.worker(address, 'foreign', ['--run-id', 'other-run']);
    expect((await foreign.exited).code).toBe(2);
    expect(foreign.raw.join('\n')).toMatch(/refused this worker: this worker belongs to run other-run/);

    // The real worker trains; a rogue joins as a member.
    fleet.worker(address, 'honest');
    await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 60_000, 'step 2');
    const rogue = await call(raw.register, raw, { workerName: 'rogue', engine: 'none', device: 'none', runId: '' });
    await expect(
      call(raw.register, raw, { workerName: 'third', engine: 'none', device: 'none', runId: '' }),
    ).rejects.toEqual(status(grpc.status.RESOURCE_EXHAUSTED, /already has 2 workers, its --max-workers/));

    // Stale and malformed uploads from a member without an assignment: refused, nothing else happens.
    const header = (r: RunRef, shards: number[], version = 0) => ({
      header: {
        run: r,
        workerId: rogue.workerId,
        contributingTriplets: 12,
        activeTriplets: 1,
        loss: 1,
        tensorCount: 1,
        shardIndexes: shards,
        weightsVersion: version,
        dataSeconds: 0,
        computeSeconds: 0,
        meanPositiveDistance: 0,
        meanNegativeDistance: 0,
      },
    });
    await expect(push(raw, [header(run(0), [0])])).rejects.toEqual(
      status(grpc.status.ABORTED, /result for step 0, the run is at step \d+/),
    );
    const chunk = {
      chunk: {
        name: 'stem/conv/kernel',
        dtype: WireDType.WIRE_D_TYPE_FLOAT32,
        shape: [1],
        chunkIndex: 0,
        chunkCount: 1,
        offset: 0,
        data: Buffer.alloc(4),
      },
    };
    await expect(push(raw, [chunk])).rejects.toEqual(
      status(grpc.status.INVALID_ARGUMENT, /tensor chunk before the header/),
    );
    await expect(push(raw, [])).rejects.toEqual(status(grpc.status.INVALID_ARGUMENT, /upload without a header/));

    // The rogue takes a shard of the next step and answers it with a wrongly shaped tensor.
    let next = await call(raw.nextStep, raw, { run: rogue.run, workerId: rogue.workerId });
    while (next.action !== StepAction.STEP_ACTION_TRAIN)
      next = await call(raw.nextStep, raw, { run: rogue.run, workerId: rogue.workerId });
    expect(next.shards.map((s) => s.index)).toEqual([1]);
    await expect(push(raw, [header(next.run!, [1], next.weightsVersion), chunk])).rejects.toEqual(
      status(grpc.status.INVALID_ARGUMENT, /tensor stem\/conv\/kernel: shape \[1\] where \[7,7,3,\d+\] was expected/),
    );
    const removed = await coord.waitFor(
      (l) => l.msg.startsWith('lost worker') && l.name === 'rogue',
      10_000,
      'the rogue removed',
    );
    expect(removed.msg).toMatch(
      /sent an unusable result: tensor stem\/conv\/kernel: shape \[1\].*shards \[1\] of step \d+ go to the other workers/,
    );
    // Once removed, its messages are refused with the reason, downloads included (promptly).
    await expect(call(raw.heartbeat, raw, { run: next.run, workerId: rogue.workerId })).rejects.toEqual(
      status(grpc.status.NOT_FOUND, /removed: sent an unusable result/),
    );
    const t0 = Date.now();
    await expect(
      new Promise((resolve, reject) => {
        const stream = raw.fetchWeights(
          { run: next.run, workerId: rogue.workerId, sliceOffset: 0, sliceLength: 0 },
          new grpc.Metadata(),
          {
            deadline: Date.now() + 15_000,
          },
        );
        stream.on('data', () => undefined);
        stream.on('error', reject);
        stream.on('end', resolve);
      }),
    ).rejects.toEqual(
      status(grpc.status.NOT_FOUND, /not a member of run proto-test-run \(removed: sent an unusable result/),
    );
    expect(Date.now() - t0).toBeLessThan(10_000); // refused at once, not left to the 15 s deadline (wide margin for a loaded machine)

    // The run completes: every step once, every step with both shards.
    expect((await coord.exited).code).toBe(0);
    const steps = coord.steps();
    expect(steps.map((l) => l.step)).toEqual(steps.map((_, i) => i));
    expect(steps.length).toBe(60);
    expect(steps.every((l) => l.shards_computed === 2 && l.triplets === 24)).toBe(true);
  });

  it('a worker that arrives after the run is over is told so and exits 0', async () => {
    // A long --finish-timeout and heartbeat timeout: the late worker may take many seconds to start.
    const coord = fleet.coordinator([
      ...TINY,
      '--steps',
      '10',
      '--min-workers',
      '1',
      '--heartbeat-timeout',
      '120000',
      '--finish-timeout',
      '120000',
      '--run-id',
      'short-run',
    ]);
    const address = await listeningAddress(coord);
    fleet.worker(address, 'honest');
    await coord.waitFor((l) => l.msg.includes('joined') && l.name === 'honest', 60_000, 'the worker joining');
    // A member that never asks for work keeps the coordinator waiting (up to --finish-timeout) to
    // tell it the run is over: the window in which the late worker arrives.
    const raw = new FleetServiceClient(address, grpc.credentials.createInsecure());
    clients.push(raw);
    const idle = await call(raw.register, raw, { workerName: 'idle', engine: 'none', device: 'none', runId: '' });
    await coord.waitFor(
      (l) => /complete after 10 steps; telling the workers/.test(l.msg),
      60_000,
      'the run completing',
    );
    const late = fleet.worker(address, 'late');
    expect((await late.exited).code).toBe(0);
    expect(late.raw.join('\n')).toMatch(/run short-run is over; nothing to do/);
    // The idle member asks for work at last, hears that the run is over, and the coordinator exits.
    expect((await call(raw.nextStep, raw, { run: idle.run, workerId: idle.workerId })).action).toBe(
      StepAction.STEP_ACTION_FINISH,
    );
    expect((await coord.exited).code).toBe(0);
  });

  it('a worker gives up with exit 1 when the coordinator stays unreachable', async () => {
    const w = fleet.worker('127.0.0.1:1', 'lonely', ['--reconnect-timeout', '1']);
    expect((await w.exited).code).toBe(1);
    expect(w.raw.join('\n')).toMatch(/the coordinator at 127.0.0.1:1 has been unreachable for \d+ s .*giving up/);
  });
});
