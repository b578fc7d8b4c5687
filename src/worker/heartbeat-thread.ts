// Heartbeats from a thread of their own: gradient computation is synchronous on the worker's main
// thread (seconds per step on CPU engines), so heartbeats sent from there would stop exactly while
// the worker is busiest. This thread has its own gRPC channel and reports to the main thread when
// the coordinator says stop or no longer knows the worker.
import { parentPort, workerData } from 'node:worker_threads';
import type { RunRef } from '../shared/gen/tricaps/v1/fleet.js';
import { callFailure, FleetClient, holdThread } from './fleet-client.js';
import type { FleetSecurity } from '../shared/fleet-security.js';

/** What the thread is started with: where to beat, before there is anyone to beat for. */
export interface HeartbeatConnection {
  address: string;
  security: FleetSecurity;
}

/** Sent to the thread once the worker is a member: it beats from then on. */
export interface HeartbeatStart {
  type: 'start';
  run: RunRef;
  workerId: string;
  intervalMs: number;
}

export type HeartbeatEvent =
  /** Loaded, with its gRPC client: a beat leaves as soon as it is started. */
  | { type: 'ready' }
  | { type: 'stop' }
  | { type: 'gone'; details: string }
  /** The membership round or the open ring changed: a ring of an older round may be dead. */
  | { type: 'round'; round: number; ringStep: number; ringRound: number };

// Started before registering (loading this module and a gRPC client takes about a second on a busy
// machine, and the coordinator counts silence from the registration), so the first beat leaves as
// soon as the membership exists.
const connection = workerData as HeartbeatConnection;
// Test hook (never set in production): a thread that takes this long to load, as on a busy machine.
const slowLoadMs = Number(process.env.TRICAPS_TEST_HEARTBEAT_LOAD_MS ?? 0);
if (slowLoadMs > 0) holdThread(slowLoadMs);
const client = new FleetClient(connection.address, connection.security);
let setup: HeartbeatStart | undefined;
let last = '';

async function beat(): Promise<void> {
  if (!setup) return;
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

parentPort!.postMessage({ type: 'ready' } satisfies HeartbeatEvent);
parentPort!.on('message', (m: HeartbeatStart | { type: 'run'; run: RunRef }) => {
  if (m.type === 'start' && !setup) {
    setup = m;
    void beat();
    setInterval(() => void beat(), m.intervalMs);
  } else if (m.type === 'run' && setup) setup.run = m.run;
});
