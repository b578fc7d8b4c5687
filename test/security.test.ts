// Who may join and what a bad gradient gets, on a real mutual-TLS coordinator with a join token and a
// real worker that keeps training throughout. Certificates are made with openssl for each run.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  FleetServiceClient,
  StepAction,
  WireDType,
  type PushGradientsRequest,
  type RegisterResponse,
} from '../src/shared/gen/tricaps/v1/fleet.js';
import { Fleet, listeningAddress, TINY } from './fleet-harness.js';
import { PeerClients } from '../src/worker/peer-link.js';
import { ExchangeMeter } from '../src/shared/exchange-meter.js';

const fleet = new Fleet();
afterEach(() => fleet.cleanup());
let dir: string;
const pem = (f: string) => join(dir, f);
const TOKEN = 'correct-horse-battery';

function openssl(...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

/** A CA, a certificate it signs for `name` (with SANs for loopback), and the key. */
function issue(ca: string, name: string): void {
  openssl(
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    `${name}.key`,
    '-out',
    `${name}.csr`,
    '-subj',
    `/CN=${name}`,
  );
  writeFileSync(pem(`${name}.ext`), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(
    'x509',
    '-req',
    '-in',
    `${name}.csr`,
    '-CA',
    `${ca}.pem`,
    '-CAkey',
    `${ca}.key`,
    '-CAcreateserial',
    '-out',
    `${name}.pem`,
    '-days',
    '2',
    '-extfile',
    `${name}.ext`,
  );
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tricaps-tls-'));
  for (const ca of ['ca', 'rogue-ca'])
    openssl(
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${ca}.key`,
      '-out',
      `${ca}.pem`,
      '-days',
      '2',
      '-subj',
      `/CN=${ca}`,
    );
  issue('ca', 'server');
  issue('ca', 'client');
  issue('rogue-ca', 'intruder');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res: Res) => void,
) => grpc.ClientUnaryCall;
function call<Req, Res>(client: FleetServiceClient, fn: Unary<Req, Res>, req: Req, token = TOKEN): Promise<Res> {
  const md = new grpc.Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return new Promise((resolve, reject) =>
    fn.call(client, req, md, { deadline: Date.now() + 15_000 }, (err, res) => (err ? reject(err) : resolve(res))),
  );
}
function push(client: FleetServiceClient, messages: PushGradientsRequest[], end = true): Promise<unknown> {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${TOKEN}`);
  return new Promise((resolve, reject) => {
    const stream = client.pushGradients(md, { deadline: Date.now() + 20_000 }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
    for (const m of messages) stream.write(m);
    if (end) stream.end();
  });
}
const status = (code: grpc.status, details: RegExp) =>
  expect.objectContaining({ code, details: expect.stringMatching(details) });
const clientCreds = (cert = 'client') =>
  grpc.credentials.createSsl(
    readFileSync(pem('ca.pem')),
    readFileSync(pem(`${cert}.key`)),
    readFileSync(pem(`${cert}.pem`)),
  );

describe('fleet security (real processes, mutual TLS, join token)', () => {
  it('refuses the wrong token, no token, an untrusted certificate, replays, NaN and oversized gradients, slow uploads; training goes on', async () => {
    const tls = ['--tls-cert', pem('server.pem'), '--tls-key', pem('server.key'), '--tls-ca', pem('ca.pem')];
    const coord = fleet.coordinator(
      [
        ...TINY,
        '--steps',
        '100000',
        '--shards',
        '2',
        '--max-workers',
        '3',
        '--heartbeat-timeout',
        '8000',
        '--upload-timeout',
        '1500',
        '--metrics-port',
        '0',
        '--run-id',
        'secure-run',
        ...tls,
      ],
      { TRICAPS_JOIN_TOKEN: TOKEN },
    );
    const address = await listeningAddress(coord);
    expect(coord.raw.join('\n')).not.toContain(TOKEN); // never logged
    const workerTls = ['--tls-ca', pem('ca.pem'), '--tls-cert', pem('client.pem'), '--tls-key', pem('client.key')];
    fleet.worker(address, 'trusted', workerTls, { TRICAPS_JOIN_TOKEN: TOKEN });
    await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 60_000, 'step 2');

    // Workers without the token, with a wrong one: refused, exit 2, the run is not disturbed.
    const noToken = fleet.worker(address, 'tokenless', workerTls);
    expect((await noToken.exited).code).toBe(2);
    expect(noToken.raw.join('\n')).toMatch(
      /refused this worker: no join token: start the worker with --join-token or TRICAPS_JOIN_TOKEN/,
    );
    const wrong = fleet.worker(address, 'guesser', workerTls, { TRICAPS_JOIN_TOKEN: 'wrong-token-0000' });
    expect((await wrong.exited).code).toBe(2);
    expect(wrong.raw.join('\n')).toMatch(/refused this worker: wrong join token for this run/);
    // A refusal names no token: neither the one presented nor the run's.
    for (const secret of ['wrong-token-0000', TOKEN]) expect(wrong.raw.join('\n')).not.toContain(secret);

    // A certificate from another CA, or no TLS at all, never gets a call through.
    const intruder = new FleetServiceClient(address, clientCreds('intruder'));
    await expect(
      call(intruder, intruder.register, { workerName: 'x', engine: 'x', device: 'x', runId: '' }),
    ).rejects.toEqual(expect.objectContaining({ code: grpc.status.UNAVAILABLE }));
    intruder.close();
    const plain = new FleetServiceClient(address, grpc.credentials.createInsecure());
    await expect(call(plain, plain.register, { workerName: 'x', engine: 'x', device: 'x', runId: '' })).rejects.toEqual(
      expect.objectContaining({ code: grpc.status.UNAVAILABLE }),
    );
    plain.close();

    // A member with the right credentials that misbehaves.
    const raw = new FleetServiceClient(address, clientCreds(), { 'grpc.max_send_message_length': 64 << 20 });
    let rogue: RegisterResponse = await call(raw, raw.register, {
      workerName: 'rogue',
      engine: 'x',
      device: 'x',
      runId: '',
    });
    const header = (r: RegisterResponse, run = r.run!, shards: number[] = [], version = 0) => ({
      header: {
        run,
        workerId: r.workerId,
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
    // Replay of an old round/step.
    await expect(push(raw, [header(rogue, { runId: 'secure-run', round: 0, step: 0 }, [0])])).rejects.toEqual(
      status(grpc.status.ABORTED, /result for step 0, the run is at step \d+/),
    );
    // A stream that never finishes is cut.
    const t0 = Date.now();
    await expect(push(raw, [], false)).rejects.toEqual(
      status(grpc.status.DEADLINE_EXCEEDED, /upload not finished within 1500 ms; cut/),
    );
    expect(Date.now() - t0).toBeLessThan(10_000); // cut by the 1.5 s upload timeout, not by the 20 s call deadline
    // A message over the size limit.
    const huge = {
      chunk: {
        name: 'stem/conv/kernel',
        dtype: WireDType.WIRE_D_TYPE_FLOAT32,
        shape: [7, 7, 3, 16],
        chunkIndex: 0,
        chunkCount: 1,
        offset: 0,
        data: Buffer.alloc(9 << 20),
      },
    };
    await expect(push(raw, [huge])).rejects.toEqual(expect.objectContaining({ code: grpc.status.RESOURCE_EXHAUSTED }));
    // NaN gradients for a real assignment: refused, never applied, the worker named and counted.
    const assignment = async () => {
      for (;;) {
        const next = await call(raw, raw.nextStep, { run: rogue.run, workerId: rogue.workerId });
        if (next.action === StepAction.STEP_ACTION_TRAIN) return next;
      }
    };
    const next = await assignment();
    const shape = [7, 7, 3, 16];
    const nan = new Float32Array(7 * 7 * 3 * 16).fill(Number.NaN);
    const nanChunk = {
      chunk: {
        name: 'stem/conv/kernel',
        dtype: WireDType.WIRE_D_TYPE_FLOAT32,
        shape,
        chunkIndex: 0,
        chunkCount: 1,
        offset: 0,
        data: Buffer.from(nan.buffer),
      },
    };
    await expect(
      push(raw, [
        header(
          rogue,
          next.run!,
          next.shards.map((s) => s.index),
          next.weightsVersion,
        ),
        nanChunk,
      ]),
    ).rejects.toEqual(
      status(grpc.status.INVALID_ARGUMENT, /tensor stem\/conv\/kernel: non-finite value NaN at element 0/),
    );
    await coord.waitFor((l) => l.msg.startsWith('lost worker') && l.name === 'rogue', 10_000, 'the rogue named');
    // An oversized tensor within the message limit: more values than the parameter has.
    rogue = await call(raw, raw.register, { workerName: 'rogue2', engine: 'x', device: 'x', runId: '' });
    const next2 = await assignment();
    const big = { chunk: { ...nanChunk.chunk, chunkCount: 2, data: Buffer.alloc(4 * 7 * 7 * 3 * 16 + 4) } };
    await expect(
      push(raw, [
        header(
          rogue,
          next2.run!,
          next2.shards.map((s) => s.index),
          next2.weightsVersion,
        ),
        big,
      ]),
    ).rejects.toEqual(status(grpc.status.INVALID_ARGUMENT, /more bytes than 2352 values can take/));
    raw.close();

    // Training went on: more steps, every one complete; the refusals are counted.
    const before = coord.steps().length;
    await coord.waitFor(() => coord.steps().length >= before + 3, 60_000, 'more steps');
    expect(coord.steps().every((l) => l.shards_computed === 2)).toBe(true);
    const port = coord.lines.find((l) => typeof l.metricsPort === 'number')!.metricsPort as number;
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(
      /^tricaps_rejected_updates_total\{reason="non-finite",worker="w\d+-[0-9a-f]{4}",run="secure-run"\} 1$/m,
    );
    expect(metrics).toMatch(
      /^tricaps_rejected_updates_total\{reason="malformed",worker="w\d+-[0-9a-f]{4}",run="secure-run"\} 1$/m,
    );
    // After every refusal above: the coordinator never logged a token, the run's or a wrong one.
    for (const secret of ['wrong-token-0000', TOKEN]) expect(coord.raw.join('\n')).not.toContain(secret);
    coord.kill('SIGTERM');
    expect((await coord.exited).code).toBe(0);
  });

  it('says once that it serves plaintext, and refuses half a TLS configuration', async () => {
    const plain = fleet.coordinator([...TINY, '--steps', '1']);
    await listeningAddress(plain);
    expect(plain.lines.filter((l) => l.msg.startsWith('serving gRPC in plaintext')).length).toBe(1);
    const half = fleet.coordinator([...TINY, '--steps', '1', '--tls-cert', pem('server.pem')]);
    expect((await half.exited).code).toBe(2);
    expect(half.raw.join('\n')).toMatch(/--tls-cert and --tls-key go together/);
    const missing = fleet.coordinator([
      ...TINY,
      '--steps',
      '1',
      '--tls-cert',
      pem('nope.pem'),
      '--tls-key',
      pem('server.key'),
    ]);
    expect((await missing.exited).code).toBe(2);
    expect(missing.raw.join('\n')).toMatch(/--tls-cert .*nope.pem: no such file/);
  });

  it('a worker with --data-root refuses data the coordinator names outside it', async () => {
    const shop = join(dir, 'shop');
    execFileSync(
      process.execPath,
      [
        'dist/cli.js',
        'data',
        'synth',
        '--out',
        shop,
        '--items',
        '16',
        '--categories',
        '2',
        '--views',
        '3',
        '--image-size',
        '16',
        '--seed',
        '1',
      ],
      { stdio: 'pipe' },
    );
    const coord = fleet.coordinator([...TINY, '--data', shop, '--batch-triplets', '4', '--steps', '1']);
    const confined = fleet.worker(await listeningAddress(coord), 'confined', ['--data-root', join(dir, 'elsewhere')]);
    expect((await confined.exited).code).toBe(2);
    expect(confined.raw.join('\n')).toMatch(/shop is outside --data-root .*elsewhere; refusing to use it/);
    const allowed = fleet.worker(await listeningAddress(coord), 'allowed', ['--data-root', dir]);
    expect((await coord.exited).code).toBe(0);
    expect((await allowed.exited).code).toBe(0);
  });

  it('ring peers use the same mutual TLS and join token: the ring trains; an untrusted certificate, plaintext or no token sends no hop', async () => {
    const tls = ['--tls-cert', pem('server.pem'), '--tls-key', pem('server.key'), '--tls-ca', pem('ca.pem')];
    const coord = fleet.coordinator(
      [...TINY, '--steps', '100000', '--shards', '2', '--min-workers', '2', '--exchange', 'ring', ...tls],
      { TRICAPS_JOIN_TOKEN: TOKEN },
    );
    const address = await listeningAddress(coord);
    // Each worker serves its ring peers with its own certificate (SAN 127.0.0.1) and checks theirs.
    const workerTls = ['--tls-ca', pem('ca.pem'), '--tls-cert', pem('client.pem'), '--tls-key', pem('client.key')];
    const peer = ['--peer-listen', '127.0.0.1:0'];
    const a = fleet.worker(address, 'a', [...workerTls, ...peer], { TRICAPS_JOIN_TOKEN: TOKEN });
    fleet.worker(address, 'b', [...workerTls, ...peer], { TRICAPS_JOIN_TOKEN: TOKEN });
    const peerLine = await a.waitFor((l) => typeof l.peerAddress === 'string', 60_000, "a's peer address");
    const step = await coord.waitFor((l) => /^step 2 loss/.test(l.msg), 90_000, 'two ring steps');
    expect(step.workers).toBe(2);
    expect(step.bytes_received).toBe((154_352 + 6) * 4); // one reduced vector in slices: the ring ran
    const hop = async (security: ConstructorParameters<typeof PeerClients>[0]) => {
      const clients = new PeerClients(security, new ExchangeMeter());
      try {
        await clients.hop(
          peerLine.peerAddress as string,
          {
            run: { runId: 'x', round: 1, step: 0 },
            fromWorker: 'w9-0000',
            hop: 0,
            slice: { index: 0, offset: 0, length: 1 },
          },
          new Float32Array(1),
          'float32',
          5000,
          new AbortController().signal,
        );
        return 'accepted';
      } catch (err) {
        return `${(err as { code?: number }).code}: ${(err as { details?: string }).details ?? (err as Error).message}`;
      }
    };
    const rogue = { tlsCa: pem('ca.pem'), tlsCert: pem('intruder.pem'), tlsKey: pem('intruder.key'), joinToken: TOKEN };
    expect(await hop(rogue)).toMatch(/^14: /); // the handshake fails: UNAVAILABLE, nothing reaches the inbox
    expect(await hop({ joinToken: TOKEN })).toMatch(/^14: /); // plaintext to a TLS port
    const trusted = { tlsCa: pem('ca.pem'), tlsCert: pem('client.pem'), tlsKey: pem('client.key') };
    expect(await hop(trusted)).toMatch(/^16: .*join token/i); // UNAUTHENTICATED: TLS alone is not enough
    // With the certificate and the token, the inbox judges the hop itself (a stranger, refused).
    expect(await hop({ ...trusted, joinToken: TOKEN })).not.toBe('accepted');
    const before = coord.steps().length;
    await coord.waitFor((l) => /^step \d+ loss/.test(l.msg) && (l.step as number) >= before + 1, 60_000, 'more steps');
  });
});
