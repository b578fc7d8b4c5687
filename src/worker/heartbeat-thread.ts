// Heartbeats from a thread of their own: gradient computation is synchronous on the worker's main
// thread (seconds per step on CPU engines), so heartbeats sent from there would stop exactly while
// the worker is busiest. This thread has its own gRPC channel and reports to the main thread when
// the coordinator says stop or no longer knows the worker.
import { parentPort, workerData } from 'node:worker_threads';
import type { RunRef } from '../shared/gen/tricaps/v1/fleet.js';
import { callFailure, FleetClient } from './fleet-client.js';
import type { FleetSecurity } from '../shared/fleet-security.js';

export interface HeartbeatSetup {
  address: string;
  run: RunRef;
  workerId: string;
  intervalMs: number;
  security: FleetSecurity;
}

export type HeartbeatEvent =
  | { type: 'stop' }
  | { type: 'gone'; details: string }
  /** The membership round or the open ring changed: a ring of an older round may be dead. */
  | { type: 'round'; round: number; ringStep: number; ringRound: number };

const setup = workerData as HeartbeatSetup;
const client = new FleetClient(setup.address, setup.security);
let last = '';

async function beat(): Promise<void> {
  try {
    const res = await client.heartbeat(setup.run, setup.workerId, Math.max(1000, setup.intervalMs * 2));
    if (res.stop) parentPort!.postMessage({ type: 'stop' } satisfies HeartbeatEvent);
    const seen = `${res.run?.round ?? 0}/${res.ringStep}/${res.ringRound}`;
    if (seen !== last) {
      last = seen;
      parentPort!.postMessage({
        type: 'round',
        round: res.run?.round ?? 0,
        ringStep: res.ringStep,
        ringRound: res.ringRound,
      } satisfies HeartbeatEvent);
    }
  } catch (err) {
    const failure = callFailure(err);
    if (failure?.outcome === 'gone' || failure?.outcome === 'wrong-run') {
      parentPort!.postMessage({ type: 'gone', details: failure.details } satisfies HeartbeatEvent);
    }
    // Other failures (coordinator unreachable) show up in the main thread's own calls.
  }
}

void beat();
setInterval(() => void beat(), setup.intervalMs);
parentPort!.on('message', (m: { type: string; run?: RunRef }) => {
  if (m.type === 'run' && m.run) setup.run = m.run;
});
