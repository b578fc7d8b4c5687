// `tricaps health-check`: asks a coordinator's standard gRPC health service whether it serves (for
// container health checks and Kubernetes exec probes, which cannot speak TLS gRPC themselves).
import type { Command } from 'commander';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';
import { channelCredentials } from '../shared/fleet-security.js';
import { FLEET_SERVICE_NAME } from '../coordinator/fleet-service.js';
import { intOption } from './options.js';

interface HealthClient extends grpc.Client {
  check(
    req: { service: string },
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res: { status: string }) => void,
  ): void;
}

export function registerHealthCommand(program: Command): void {
  program
    .command('health-check')
    .description('exit 0 when the coordinator at --address reports SERVING on the gRPC health service, 1 otherwise')
    .requiredOption('--address <host:port>', 'the coordinator')
    .option('--tls-ca <pem>', 'CA of the coordinator certificate (TLS)')
    .option('--tls-cert <pem>', 'client certificate (mutual TLS)')
    .option('--tls-key <pem>', 'its key')
    .option('--timeout <ms>', 'give up after this long', intOption(1, 600_000), 3000)
    .action(async (o) => {
      const def = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { enums: String })) as unknown as {
        grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => HealthClient } } };
      };
      const client = new def.grpc.health.v1.Health(
        o.address,
        channelCredentials({ tlsCa: o.tlsCa, tlsCert: o.tlsCert, tlsKey: o.tlsKey }),
      );
      const status = await new Promise<string>((resolve) =>
        client.check({ service: FLEET_SERVICE_NAME }, { deadline: Date.now() + o.timeout }, (err, res) =>
          resolve(err ? `unreachable (${err.details || err.message})` : res.status),
        ),
      );
      client.close();
      console.log(`${o.address}: ${status}`);
      process.exitCode = status === 'SERVING' ? 0 : 1;
    });
}
