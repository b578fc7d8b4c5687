// Generated protocol code: up to date with proto/, and usable with grpc-js over loopback.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  FleetServiceClient,
  FleetServiceService,
  FetchWeightsResponse,
  GradientHeader,
  type FleetServiceServer,
} from '../../src/shared/gen/tricaps/v1/fleet.js';
import { decodeTensor, encodeTensor, type EncodedChunk } from '../../src/shared/tensor-codec.js';
import { fromProtoChunk, toProtoChunk } from '../../src/shared/wire.js';

describe('generated protocol code', () => {
  it('matches what `make proto` would generate from proto/', () => {
    const out = mkdtempSync(join(tmpdir(), 'tricaps-gen-'));
    try {
      const template = readFileSync('buf.gen.yaml', 'utf8').replace('out: src/shared/gen', `out: ${out}`);
      writeFileSync(join(out, 'buf.gen.yaml'), template);
      execFileSync('npx', ['buf', 'generate', '--template', join(out, 'buf.gen.yaml')], { stdio: 'pipe' });
      // ts-proto's output exactly: nothing edits the generated file.
      const fresh = readFileSync(join(out, 'tricaps/v1/fleet.ts'), 'utf8');
      expect(
        fresh === readFileSync('src/shared/gen/tricaps/v1/fleet.ts', 'utf8'),
        'src/shared/gen is stale: run `make proto` and commit',
      ).toBe(true);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('skips fields it does not know (a newer peer), keeping the ones it does', () => {
    const known = GradientHeader.encode({
      run: { runId: 'r', round: 2, step: 3 },
      workerId: 'w1',
      contributingTriplets: 4,
      loss: 0.5,
      tensorCount: 1,
      shardIndexes: [1],
      weightsVersion: 7,
      dataSeconds: 0,
      computeSeconds: 0,
      activeTriplets: 2,
      meanPositiveDistance: 0,
      meanNegativeDistance: 0,
    }).finish();
    // Field 99 as a varint and field 98 as bytes: tags no version of the schema has used.
    // Tags as varints: (99 << 3) | 0 = 792 -> 0x98 0x06; (98 << 3) | 2 = 786 -> 0x92 0x06.
    const unknown = Uint8Array.of(0x98, 0x06, 0x96, 0x01, 0x92, 0x06, 3, 1, 2, 3);
    expect(GradientHeader.decode(unknown)).toEqual(GradientHeader.decode(new Uint8Array(0)));
    const decoded = GradientHeader.decode(Uint8Array.from([...unknown, ...known]));
    expect(decoded).toMatchObject({ workerId: 'w1', contributingTriplets: 4, shardIndexes: [1], weightsVersion: 7 });
  });

  describe('over grpc-js on a loopback port chosen at run time', () => {
    let server: grpc.Server;
    let client: InstanceType<typeof FleetServiceClient>;
    const weights = Float32Array.from({ length: 300_000 }, (_, i) => Math.cos(i));

    beforeAll(async () => {
      server = new grpc.Server();
      const unimplemented = (_call: unknown, callback: (e: grpc.ServiceError) => void) =>
        callback({ code: grpc.status.UNIMPLEMENTED } as grpc.ServiceError);
      const impl: FleetServiceServer = {
        register: unimplemented,
        heartbeat: unimplemented,
        nextStep: unimplemented,
        pushGradients: unimplemented as never,
        fetchWeights: (call) => {
          for (const c of encodeTensor('w', weights, [300, 1000], 'float16', 256 * 1024))
            call.write(FetchWeightsResponse.fromPartial({ chunk: toProtoChunk(c) }));
          call.end();
        },
      };
      server.addService(FleetServiceService, impl);
      const port = await new Promise<number>((resolve, reject) =>
        server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
          err ? reject(err) : resolve(p),
        ),
      );
      client = new FleetServiceClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    });
    afterAll(() => {
      client?.close();
      server?.forceShutdown();
    });

    it('streams a float16 tensor in chunks that reassemble within float16 precision', async () => {
      const chunks: EncodedChunk[] = [];
      await new Promise<void>((resolve, reject) => {
        const stream = client.fetchWeights({
          run: { runId: 'r', round: 1, step: 0 },
          workerId: 'w0',
          sliceOffset: 0,
          sliceLength: 0,
        });
        stream.on('data', (m: FetchWeightsResponse) => chunks.push(fromProtoChunk(m.chunk!)));
        stream.on('error', reject);
        stream.on('end', () => resolve());
      });
      expect(chunks.length).toBe(3);
      const back = decodeTensor(chunks, { name: 'w', shape: [300, 1000] }, { maxElements: 1 << 22, maxChunks: 16 });
      back.forEach((v, i) => expect(Math.abs(v - weights[i])).toBeLessThan(1e-3));
    });

    it('maps an unknown wire dtype to a decode error', () => {
      expect(() =>
        fromProtoChunk({
          name: 'w',
          dtype: 0,
          shape: [1],
          chunkIndex: 0,
          chunkCount: 1,
          offset: 0,
          data: new Uint8Array(4),
        }),
      ).toThrow(/unsupported wire dtype 0/);
    });
  });
});
