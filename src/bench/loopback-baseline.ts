// The ceilings `bench exchange` is read against: how fast this machine moves bytes between two
// threads over loopback with no gRPC, protobuf or tensor code at all, once over a plain TCP socket
// and once over Node's own HTTP/2 (the layer grpc-js is built on, with the same widened windows the
// fleet uses). A thread of its own sends `bytes` at a time to a server on this thread, which
// answers each message with one byte; the round trip is timed. Shaped like the exchange benchmark
// (simulated workers on one thread, coordinator on another), so the numbers share their conditions.
import { createServer, type AddressInfo } from 'node:net';
import { createServer as createHttp2Server } from 'node:http2';
import { Worker as Thread } from 'node:worker_threads';
import { median } from '../shared/stats.js';
import { FLOW_CONTROL_WINDOW, MAX_FRAME_SIZE, widenSession } from '../shared/http2-window.js';

export type LoopbackProtocol = 'tcp' | 'http2';

export interface LoopbackBaseline {
  bytes_per_round: number;
  rounds: number;
  ms_per_round_median: number;
  gb_per_s: number;
}

// Plain JavaScript for eval'd threads: no build step, no imports of ours.
const SENDERS: Record<LoopbackProtocol, string> = {
  tcp: `
const { workerData, parentPort } = require('node:worker_threads');
const net = require('node:net');
const { port, bytes, rounds } = workerData;
const payload = Buffer.alloc(bytes, 1);
const socket = net.connect(port, '127.0.0.1', async () => {
  socket.setNoDelay(true);
  const times = [];
  for (let i = 0; i <= rounds; i++) {
    const t0 = performance.now();
    socket.write(payload);
    await new Promise((resolve) => socket.once('data', resolve));
    if (i > 0) times.push(performance.now() - t0); // round 0 warms the connection up
  }
  socket.end();
  parentPort.postMessage({ times });
});
socket.on('error', (err) => parentPort.postMessage({ error: err.message }));
`,
  http2: `
const { workerData, parentPort } = require('node:worker_threads');
const http2 = require('node:http2');
const { port, bytes, rounds, window, frame } = workerData;
const payload = Buffer.alloc(bytes, 1);
const session = http2.connect('http://127.0.0.1:' + port, { settings: { initialWindowSize: window, maxFrameSize: frame } });
session.on('error', (err) => parentPort.postMessage({ error: err.message }));
session.on('connect', async () => {
  session.setLocalWindowSize(window);
  const times = [];
  try {
    for (let i = 0; i <= rounds; i++) {
      const t0 = performance.now();
      await new Promise((resolve, reject) => {
        const req = session.request({ ':method': 'POST', ':path': '/' });
        req.on('response', (h) => h[':status'] !== 200 && reject(new Error('the receiver got a different number of bytes')));
        req.on('data', () => undefined);
        req.on('end', resolve);
        req.on('error', reject);
        req.end(payload);
      });
      if (i > 0) times.push(performance.now() - t0); // round 0 warms the connection up
    }
  } catch (err) {
    parentPort.postMessage({ error: err.message });
    return;
  }
  session.close();
  parentPort.postMessage({ times });
});
`,
};

/** Starts the receiving end on this thread; resolves to its port and a function that stops it. */
export async function listenForRounds(
  protocol: LoopbackProtocol,
  bytes: number,
): Promise<{ port: number; close: () => Promise<void> }> {
  if (protocol === 'tcp') {
    const server = createServer((socket) => {
      socket.setNoDelay(true);
      let received = 0;
      socket.on('data', (d) => {
        received += d.length;
        while (received >= bytes) {
          received -= bytes;
          socket.write('k');
        }
      });
      socket.on('error', () => undefined); // the sender closing first is fine
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
    return {
      port: (server.address() as AddressInfo).port,
      close: () => new Promise<void>((resolve) => server.close(() => resolve())),
    };
  }
  const server = createHttp2Server();
  const sessions = new Set<import('node:http2').ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('close', () => sessions.delete(session));
    session.on('error', () => undefined);
    widenSession(session);
  });
  server.on('stream', (stream) => {
    let received = 0;
    stream.on('data', (d: Buffer) => (received += d.length));
    stream.on('end', () => {
      // A round counts only if every byte arrived.
      stream.respond({ ':status': received === bytes ? 200 : 400 });
      stream.end('k');
    });
    stream.on('error', () => undefined);
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sessions) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export async function loopbackBaseline(
  bytes = 10_000_000,
  rounds = 20,
  protocol: LoopbackProtocol = 'tcp',
): Promise<LoopbackBaseline> {
  const server = await listenForRounds(protocol, bytes);
  try {
    const times = await sendRounds(server.port, bytes, rounds, protocol);
    const ms = median(times);
    return { bytes_per_round: bytes, rounds, ms_per_round_median: ms, gb_per_s: bytes / (ms / 1000) / 1e9 };
  } finally {
    await server.close();
  }
}

/** Round-trip times (ms) of `rounds` messages of `bytes` sent from a thread of its own to `port`. */
export async function sendRounds(
  port: number,
  bytes: number,
  rounds: number,
  protocol: LoopbackProtocol = 'tcp',
): Promise<number[]> {
  const sender = new Thread(SENDERS[protocol], {
    eval: true,
    workerData: { port, bytes, rounds, window: FLOW_CONTROL_WINDOW, frame: MAX_FRAME_SIZE },
  });
  try {
    const reply = await new Promise<{ times?: number[]; error?: string }>((resolve, reject) => {
      sender.once('message', resolve);
      sender.once('error', reject);
    });
    if (!reply.times)
      throw new Error(`loopback baseline (${protocol}): cannot send to 127.0.0.1:${port}: ${reply.error}`);
    return reply.times;
  } finally {
    await sender.terminate();
  }
}
