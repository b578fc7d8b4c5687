// Who may talk to the fleet, without a network: the join token's check (which status and words a
// caller gets, never a token in them), the metadata that carries it, and the TLS settings each side
// accepts or refuses, with their messages. Real processes over mutual TLS: test/security.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  callMetadata,
  channelCredentials,
  serverCredentials,
  tokenProblem,
  TOKEN_HEADER,
} from '../../src/shared/fleet-security.js';
import type { Logger } from '../../src/shared/log.js';
import { Gate } from '../../src/shared/stream-service.js';

const TOKEN = 'the-run-token-0001';
let dir: string;
const pem = (f: string) => join(dir, f);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tricaps-fleet-security-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      'key.pem',
      '-out',
      'cert.pem',
      '-days',
      '1',
      '-subj',
      '/CN=t',
    ],
    { cwd: dir, stdio: 'pipe' },
  );
  writeFileSync(pem('not.pem'), 'hello\n');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function logger(): { log: Logger; lines: string[] } {
  const lines: string[] = [];
  const at = (level: string) => (a: unknown, b?: string) =>
    lines.push(`${level} ${typeof a === 'string' ? a : `${JSON.stringify(a)} ${b}`}`);
  return { log: { info: at('info'), warn: at('warn') } as unknown as Logger, lines };
}

const md = (value?: string) => {
  const m = new grpc.Metadata();
  if (value !== undefined) m.set(TOKEN_HEADER, value);
  return m;
};

describe('join token', () => {
  it('passes every call when the run has no token, and the right token when it has one', () => {
    expect(tokenProblem(undefined, md())).toBeUndefined();
    expect(tokenProblem('', md('Bearer anything'))).toBeUndefined();
    expect(tokenProblem(TOKEN, md(`Bearer ${TOKEN}`))).toBeUndefined();
    expect(tokenProblem(TOKEN, callMetadata(TOKEN))).toBeUndefined();
  });

  it('refuses a missing or malformed header as unauthenticated, with what to do', () => {
    for (const value of [undefined, '', TOKEN, `Basic ${TOKEN}`, `bearer ${TOKEN}`])
      expect(tokenProblem(TOKEN, md(value)), String(value)).toEqual({
        code: grpc.status.UNAUTHENTICATED,
        details: 'no join token: start the worker with --join-token or TRICAPS_JOIN_TOKEN',
      });
  });

  it('refuses a wrong token as permission denied, naming neither token', () => {
    for (const wrong of ['wrong-0000', `${TOKEN}x`, TOKEN.slice(0, -1), ` ${TOKEN}`, ''])
      expect(tokenProblem(TOKEN, md(`Bearer ${wrong}`)), wrong).toEqual({
        code: grpc.status.PERMISSION_DENIED,
        details: 'wrong join token for this run',
      });
  });

  it('carries the token as a bearer header, and nothing without one', () => {
    expect(callMetadata(TOKEN).get(TOKEN_HEADER)).toEqual([`Bearer ${TOKEN}`]);
    expect(callMetadata().get(TOKEN_HEADER)).toEqual([]);
    expect(callMetadata('').get(TOKEN_HEADER)).toEqual([]);
  });
});

describe('TLS settings', () => {
  it('serves plaintext without a certificate, said once: a note on loopback, a warning elsewhere', () => {
    for (const [loopback, level] of [
      [true, 'info'],
      [false, 'warn'],
    ] as const) {
      const { log, lines } = logger();
      expect(serverCredentials({}, log, loopback)._isSecure()).toBe(false);
      expect(lines).toEqual([`${level} serving gRPC in plaintext (no --tls-cert): use it only on a trusted network`]);
    }
    // Not said to be on loopback: other machines may reach it, so a warning.
    const unsaid = logger();
    serverCredentials({}, unsaid.log);
    expect(unsaid.lines[0]).toMatch(/^warn serving gRPC in plaintext/);
  });

  it('serves TLS with a certificate, mutual with a CA, and says which', () => {
    const server = logger();
    expect(serverCredentials({ tlsCert: pem('cert.pem'), tlsKey: pem('key.pem') }, server.log)._isSecure()).toBe(true);
    expect(server.lines).toEqual(['info {"mutualTls":false} serving gRPC over TLS']);
    const mutual = logger();
    serverCredentials({ tlsCert: pem('cert.pem'), tlsKey: pem('key.pem'), tlsCa: pem('cert.pem') }, mutual.log);
    expect(mutual.lines).toEqual([
      'info {"mutualTls":true} serving gRPC over TLS; clients need a certificate signed by --tls-ca',
    ]);
    expect(channelCredentials({ tlsCa: pem('cert.pem') })._isSecure()).toBe(true);
    expect(channelCredentials({})._isSecure()).toBe(false);
  });

  it('refuses half a configuration and files that are missing or not PEM, naming the flag', () => {
    const { log } = logger();
    expect(() => serverCredentials({ tlsCa: pem('cert.pem') }, log)).toThrow(
      '--tls-ca on the coordinator checks client certificates and needs --tls-cert and --tls-key as well',
    );
    expect(() => serverCredentials({ tlsCert: pem('cert.pem') }, log)).toThrow('--tls-cert and --tls-key go together');
    expect(() => serverCredentials({ tlsKey: pem('key.pem') }, log)).toThrow('--tls-cert and --tls-key go together');
    expect(() => channelCredentials({ tlsCert: pem('cert.pem') })).toThrow('--tls-cert and --tls-key go together');
    expect(() => channelCredentials({ tlsKey: pem('key.pem') })).toThrow('--tls-cert and --tls-key go together');
    expect(() => serverCredentials({ tlsCert: pem('nope.pem'), tlsKey: pem('key.pem') }, log)).toThrow(
      `--tls-cert ${pem('nope.pem')}: no such file`,
    );
    expect(() => serverCredentials({ tlsCert: pem('cert.pem'), tlsKey: pem('not.pem') }, log)).toThrow(
      `--tls-key ${pem('not.pem')}: not a PEM file`,
    );
    expect(() => channelCredentials({ tlsCa: pem('not.pem') })).toThrow(`--tls-ca ${pem('not.pem')}: not a PEM file`);
  });
});

describe('call admission (Gate)', () => {
  const call = (peer: string, token?: string) => ({ getPeer: () => peer, metadata: callMetadata(token) });
  const refusal = (r: ReturnType<Gate['admit']>) => ('refusal' in r ? r.refusal : undefined);

  it('admits at most --max-calls-per-peer open calls from one peer; others are not held up; a release frees one slot once', () => {
    const gate = new Gate({ maxCallsPerPeer: 3 });
    const held = [0, 1, 2].map(() => gate.admit(call('10.0.0.1:5000')));
    expect(held.every((h) => 'release' in h)).toBe(true);
    expect(refusal(gate.admit(call('10.0.0.1:5000')))).toEqual({
      code: grpc.status.RESOURCE_EXHAUSTED,
      details: 'more than 3 concurrent calls from 10.0.0.1:5000',
    });
    expect('release' in gate.admit(call('10.0.0.2:5000'))).toBe(true); // another peer
    const first = held[0] as { release: () => void };
    first.release();
    first.release(); // twice: still one slot
    expect('release' in gate.admit(call('10.0.0.1:5000'))).toBe(true);
    expect(refusal(gate.admit(call('10.0.0.1:5000')))?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    // All given back: the full allowance again.
    const again = new Gate({ maxCallsPerPeer: 1 });
    const one = again.admit(call('p:1')) as { release: () => void };
    expect(refusal(again.admit(call('p:1')))?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    one.release();
    expect('release' in again.admit(call('p:1'))).toBe(true);
  });

  it('refuses calls without the run token before counting them, and logs a refusal once a minute per peer, never a token', () => {
    const { log, lines } = logger();
    const gate = new Gate({ maxCallsPerPeer: 1, joinToken: TOKEN, log });
    expect(refusal(gate.admit(call('a:1')))?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(refusal(gate.admit(call('a:1', 'guess-0000')))?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(refusal(gate.admit(call('b:1', 'guess-0000')))?.code).toBe(grpc.status.PERMISSION_DENIED);
    // The refused calls took no slot: a good one is admitted, then the peer's allowance is used.
    expect('release' in gate.admit(call('a:1', TOKEN))).toBe(true);
    expect(refusal(gate.admit(call('a:1', TOKEN)))?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(lines).toEqual([
      expect.stringMatching(/ refused a call from a:1: no join token/),
      expect.stringMatching(/ refused a call from b:1: wrong join token for this run$/),
    ]);
    expect(lines.join('\n')).not.toMatch(/guess-0000|the-run-token/);
  });
});
