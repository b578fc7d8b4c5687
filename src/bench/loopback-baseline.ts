// The ceiling `bench exchange` is read against: how fast this machine moves bytes between two
// threads over a plain loopback TCP socket, with no gRPC, HTTP/2, protobuf or tensor code at all.
// A thread of its own sends `bytes` at a time to a server on this thread, which answers each
// message with one byte; the round trip is timed. Shaped like the exchange benchmark (simulated
// workers on one thread, coordinator on another), so the two numbers share their conditions.
import { createServer, type AddressInfo } from 'node:net';
import { Worker as Thread } from 'node:worker_threads';
import { median } from '../shared/stats.js';

export interface LoopbackBaseline {
  bytes_per_round: number;
  rounds: number;
  ms_per_round_median: number;
  gb_per_s: number;
}

// Plain JavaScript for an eval'd thread: no build step, no imports of ours.
const SENDER = `
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
`;

export async function loopbackBaseline(bytes = 10_000_000, rounds = 20): Promise<LoopbackBaseline> {
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
  try {
    const times = await sendRounds((server.address() as AddressInfo).port, bytes, rounds);
    const ms = median(times);
    return { bytes_per_round: bytes, rounds, ms_per_round_median: ms, gb_per_s: bytes / (ms / 1000) / 1e9 };
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** Round-trip times (ms) of `rounds` messages of `bytes` sent from a thread of its own to `port`. */
export async function sendRounds(port: number, bytes: number, rounds: number): Promise<number[]> {
  const sender = new Thread(SENDER, { eval: true, workerData: { port, bytes, rounds } });
  try {
    const reply = await new Promise<{ times?: number[]; error?: string }>((resolve, reject) => {
      sender.once('message', resolve);
      sender.once('error', reject);
    });
    if (!reply.times) throw new Error(`loopback baseline: cannot send to 127.0.0.1:${port}: ${reply.error}`);
    return reply.times;
  } finally {
    await sender.terminate();
  }
}
