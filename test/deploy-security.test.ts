// The Kubernetes security manifests parse, and agree with what the code serves: the gRPC and metrics
// ports the NetworkPolicy admits are the ones the coordinator is told to use, and the Secrets carry
// the keys the README tells the pods to mount.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';

const docs = (path: string) =>
  parseAllDocuments(readFileSync(path, 'utf8')).map((d) => {
    expect(d.errors, path).toEqual([]);
    return d.toJS() as Record<string, any>;
  });

describe('deploy/kubernetes/security', () => {
  it('admits only workers to gRPC and only Prometheus to metrics, on the ports the CLI uses', () => {
    const policies = docs('deploy/kubernetes/security/networkpolicy.yaml');
    expect(policies.map((p) => `${p.apiVersion}/${p.kind}`)).toEqual([
      'networking.k8s.io/v1/NetworkPolicy',
      'networking.k8s.io/v1/NetworkPolicy',
    ]);
    const coordinator = policies.find(
      (p) => p.spec.podSelector.matchLabels['app.kubernetes.io/component'] === 'coordinator',
    )!;
    const worker = policies.find((p) => p.spec.podSelector.matchLabels['app.kubernetes.io/component'] === 'worker')!;
    expect(coordinator.spec.ingress).toHaveLength(2);
    const [grpcRule, metricsRule] = coordinator.spec.ingress;
    expect(grpcRule.from).toEqual([
      { podSelector: { matchLabels: expect.objectContaining({ 'app.kubernetes.io/component': 'worker' }) } },
    ]);
    // The coordinator's default --listen port.
    expect(readFileSync('src/cli/fleet.ts', 'utf8')).toContain(`'0.0.0.0:${grpcRule.ports[0].port}'`);
    // Metrics: the monitoring namespace only (an empty selector would admit every namespace).
    const prometheusOnly = [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }];
    expect(metricsRule.from).toEqual(prometheusOnly);
    // Workers: ring hops from workers only, on the port the worker StatefulSet listens for peers.
    const workersOnly = [
      {
        podSelector: { matchLabels: { 'app.kubernetes.io/name': 'tricaps', 'app.kubernetes.io/component': 'worker' } },
      },
    ];
    expect(worker.spec.ingress).toEqual([
      { from: workersOnly, ports: [{ protocol: 'TCP', port: 7071 }] },
      { from: prometheusOnly, ports: [{ protocol: 'TCP', port: 9464 }] },
    ]);
    const workerArgs: string[] = docs('deploy/kubernetes/base/workers.yaml')[0].spec.template.spec.containers[0].args;
    expect(workerArgs).toContain('--peer-listen=0.0.0.0:7071');
    expect(workerArgs).toContain('--peer-advertise=$(POD_NAME).tricaps-worker:7071');
    for (const p of policies) expect(p.spec.policyTypes).toEqual(['Ingress']);
  });

  it('has the Secrets the README names, with the keys the flags expect', () => {
    const secrets = docs('deploy/kubernetes/security/secrets.yaml');
    const byName = new Map(secrets.map((s) => [s.metadata.name, s]));
    expect(Object.keys(byName.get('tricaps-join-token')!.stringData)).toEqual(['token']);
    for (const name of ['tricaps-coordinator-tls', 'tricaps-worker-tls'])
      expect(Object.keys(byName.get(name)!.stringData).sort()).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    const readme = readFileSync('README.md', 'utf8');
    for (const name of byName.keys()) expect(readme).toContain(name);
  });
});
