// Simulated workers for `tricaps bench exchange`, on a thread of their own so that their encoding
// and sending does not share the coordinator's event loop: each registers, then per step takes its
// assignment, downloads the weights when they changed, and uploads a P-parameter gradient.
import { parentPort, workerData } from 'node:worker_threads';
import { StepAction } from '../shared/gen/tricaps/v1/fleet.js';
import { FleetClient } from '../worker/fleet-client.js';

export interface ExchangeClientsSetup {
  address: string;
  workers: number;
  specs: { name: string; shape: number[] }[];
  wire: 'float32' | 'float16';
}

const setup = workerData as ExchangeClientsSetup;

async function simulate(index: number): Promise<void> {
  const client = new FleetClient(setup.address);
  const reg = await client.register(
    { workerName: `sim-${index}`, engine: 'none', device: 'none', runId: '', peerAddress: '' },
    10_000,
  );
  const grads: [string, Float32Array, number[]][] = setup.specs.map((s) => {
    const size = s.shape.reduce((a, b) => a * b, 1);
    return [s.name, Float32Array.from({ length: size }, (_, i) => Math.sin(i + index) * 1e-3), s.shape];
  });
  const shapes = new Map(setup.specs.map((s) => [s.name, s.shape]));
  let version = -1;
  let run = reg.run!;
  for (;;) {
    const next = await client.nextStep(run, reg.workerId, 60_000);
    run = next.run ?? run;
    if (next.action === StepAction.STEP_ACTION_FINISH) break;
    if (next.action !== StepAction.STEP_ACTION_TRAIN) continue;
    if (version !== next.weightsVersion)
      version = (await client.fetchWeights(run, reg.workerId, shapes, 60_000)).version;
    const units = next.shards.map((s) => s.index);
    await client.pushGradients(
      {
        run,
        workerId: reg.workerId,
        contributingTriplets: 16,
        activeTriplets: 16,
        loss: 1,
        tensorCount: grads.length,
        shardIndexes: units,
        weightsVersion: version,
        dataSeconds: 0,
        computeSeconds: 0,
        meanPositiveDistance: 0,
        meanNegativeDistance: 0,
      },
      grads,
      setup.wire,
      60_000,
    );
  }
  client.close();
}

Promise.all(Array.from({ length: setup.workers }, (_, i) => simulate(i))).then(
  () => parentPort!.postMessage({ done: true }),
  (err: Error) => parentPort!.postMessage({ error: err.message }),
);
