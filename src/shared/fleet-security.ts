// Who may talk to the coordinator: TLS (optionally mutual, client certificates signed by --tls-ca)
// and a shared join token sent as `authorization: Bearer <token>` metadata on every call. The token
// comes from --join-token or TRICAPS_JOIN_TOKEN and is never logged. Without TLS the gRPC traffic
// is plaintext, which is said once in the log.
import { existsSync, readFileSync } from 'node:fs';
import { timingSafeEqual, createHash } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { UsageError } from './errors.js';
import type { Logger } from './log.js';

export interface FleetSecurity {
  /** PEM files. Coordinator: its certificate and key; worker: its client certificate and key. */
  tlsCert?: string;
  tlsKey?: string;
  /** Coordinator: CA that must have signed client certificates (mutual TLS). Worker: CA of the coordinator. */
  tlsCa?: string;
  joinToken?: string;
}

function readPem(path: string, flag: string): Buffer {
  if (!existsSync(path)) throw new UsageError(`${flag} ${path}: no such file`);
  const pem = readFileSync(path);
  if (!pem.toString('utf8').includes('-----BEGIN ')) throw new UsageError(`${flag} ${path}: not a PEM file`);
  return pem;
}

export function serverCredentials(s: FleetSecurity, log: Logger, loopback = false): grpc.ServerCredentials {
  if (!s.tlsCert && !s.tlsKey) {
    if (s.tlsCa)
      throw new UsageError(
        '--tls-ca on the coordinator checks client certificates and needs --tls-cert and --tls-key as well',
      );
    // Said once; only a warning when other machines can reach the port.
    log[loopback ? 'info' : 'warn']('serving gRPC in plaintext (no --tls-cert): use it only on a trusted network');
    return grpc.ServerCredentials.createInsecure();
  }
  if (!s.tlsCert || !s.tlsKey) throw new UsageError('--tls-cert and --tls-key go together');
  const ca = s.tlsCa ? readPem(s.tlsCa, '--tls-ca') : null;
  log.info(
    { mutualTls: Boolean(ca) },
    ca ? 'serving gRPC over TLS; clients need a certificate signed by --tls-ca' : 'serving gRPC over TLS',
  );
  return grpc.ServerCredentials.createSsl(
    ca,
    [{ cert_chain: readPem(s.tlsCert, '--tls-cert'), private_key: readPem(s.tlsKey, '--tls-key') }],
    Boolean(ca),
  );
}

export function channelCredentials(s: FleetSecurity): grpc.ChannelCredentials {
  if (!s.tlsCa && !s.tlsCert && !s.tlsKey) return grpc.credentials.createInsecure();
  if (Boolean(s.tlsCert) !== Boolean(s.tlsKey)) throw new UsageError('--tls-cert and --tls-key go together');
  return grpc.credentials.createSsl(
    s.tlsCa ? readPem(s.tlsCa, '--tls-ca') : null,
    s.tlsKey ? readPem(s.tlsKey, '--tls-key') : null,
    s.tlsCert ? readPem(s.tlsCert, '--tls-cert') : null,
  );
}

export const TOKEN_HEADER = 'authorization';

/** Metadata for a call, carrying the join token when there is one. */
export function callMetadata(token?: string): grpc.Metadata {
  const md = new grpc.Metadata();
  if (token) md.set(TOKEN_HEADER, `Bearer ${token}`);
  return md;
}

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Why a call's metadata does not carry the expected token (undefined: it does, or none is needed). */
export function tokenProblem(
  expected: string | undefined,
  md: grpc.Metadata,
): { code: grpc.status; details: string } | undefined {
  if (!expected) return undefined;
  const value = md.get(TOKEN_HEADER)[0];
  if (typeof value !== 'string' || !value.startsWith('Bearer ')) {
    return {
      code: grpc.status.UNAUTHENTICATED,
      details: 'no join token: start the worker with --join-token or TRICAPS_JOIN_TOKEN',
    };
  }
  // Compare digests in constant time: the token's length and content do not leak through timing.
  if (!timingSafeEqual(digest(value.slice(7)), digest(expected)))
    return { code: grpc.status.PERMISSION_DENIED, details: 'wrong join token for this run' };
  return undefined;
}
