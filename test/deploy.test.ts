// The deployment without a cluster: every manifest parses and passes the Kubernetes and Prometheus
// Operator schemas (kubernetes-models, from the npm registry); the pieces agree with each other and
// with the code (ports, labels and selectors, names, the metrics port scraped is the one served,
// every metric an alert or a dashboard panel uses is one the code exports); the images are built as
// the README says.
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { Service } from 'kubernetes-models/v1/Service';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { Secret } from 'kubernetes-models/v1/Secret';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { CoordinatorMetrics, WorkerMetrics } from '../src/shared/metrics.js';

type Obj = Record<string, any>;
const ROOT = 'deploy/kubernetes';

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? yamlFiles(p) : p.endsWith('.yaml') ? [p] : [];
  });
}
const load = (path: string): Obj[] =>
  parseAllDocuments(readFileSync(path, 'utf8')).map((d) => {
    expect(d.errors, path).toEqual([]);
    return d.toJS() as Obj;
  });
const objects = yamlFiles(ROOT).flatMap((f) => load(f).map((o) => ({ file: f, o })));
const find = (kind: string, name: string) => objects.find(({ o }) => o.kind === kind && o.metadata?.name === name)!.o;
const arg = (args: string[], flag: string) => args.find((a) => a.startsWith(`${flag}=`))?.split('=')[1];

const MODELS: Record<string, new (o: Obj) => { validate(): void }> = {
  StatefulSet,
  Service,
  NetworkPolicy,
  Secret,
  PodMonitor,
  PrometheusRule,
} as never;

/** Every metric name the code can export, with the series a histogram adds. */
function exportedMetricNames(): Set<string> {
  const names = new Set<string>();
  for (const m of [new CoordinatorMetrics(), new WorkerMetrics()]) {
    for (const metric of m.registry.getMetricsAsArray()) {
      const name = (metric as unknown as { name: string }).name;
      names.add(name);
      for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
    }
  }
  return names;
}
const usedTricapsMetrics = (expr: string) => [...expr.matchAll(/\btricaps_[a-z_]+/g)].map((m) => m[0]);

describe('deploy/kubernetes', () => {
  it('every object passes its schema (kubernetes-models) and every kustomization names files that exist', () => {
    const kinds = new Set<string>();
    for (const { file, o } of objects) {
      if (o.kind === 'Kustomization') {
        for (const r of o.resources ?? []) expect(existsSync(join(file, '..', r)), `${file}: ${r}`).toBe(true);
        continue;
      }
      const Model = MODELS[o.kind];
      expect(Model, `${file}: no schema check for kind ${o.kind}`).toBeDefined();
      expect(() => new Model(o).validate(), `${file} ${o.kind}/${o.metadata?.name}`).not.toThrow();
      kinds.add(o.kind);
    }
    expect([...kinds].sort()).toEqual([
      'NetworkPolicy',
      'PodMonitor',
      'PrometheusRule',
      'Secret',
      'Service',
      'StatefulSet',
    ]);
  });

  it('wires coordinator, workers, service, monitors and policies together', () => {
    const coord = find('StatefulSet', 'tricaps-coordinator');
    const workers = find('StatefulSet', 'tricaps-worker');
    const svc = find('Service', 'tricaps-coordinator');
    for (const s of [coord, workers])
      expect(s.spec.template.metadata.labels).toMatchObject(s.spec.selector.matchLabels);
    expect(coord.spec.template.metadata.labels).toMatchObject(svc.spec.selector);
    const c = coord.spec.template.spec.containers[0];
    const w = workers.spec.template.spec.containers[0];
    const port = (container: Obj, name: string) => container.ports.find((p: Obj) => p.name === name).containerPort;
    // gRPC: --listen == container port == service port; workers dial the service.
    expect(Number(arg(c.args, '--listen')!.split(':')[1])).toBe(port(c, 'grpc'));
    expect(svc.spec.ports.find((p: Obj) => p.name === 'grpc')).toMatchObject({
      port: port(c, 'grpc'),
      targetPort: 'grpc',
    });
    expect(arg(w.args, '--coordinator')).toBe(`${svc.metadata.name}:${port(c, 'grpc')}`);
    // Metrics: the port served is the one scraped and admitted.
    expect(Number(arg(c.args, '--metrics-port'))).toBe(port(c, 'metrics'));
    expect(Number(arg(w.args, '--metrics-port'))).toBe(port(w, 'metrics'));
    const pm = find('PodMonitor', 'tricaps');
    expect(pm.spec.podMetricsEndpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics' });
    expect(coord.spec.template.metadata.labels).toMatchObject(pm.spec.selector.matchLabels);
    expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    const policy = find('NetworkPolicy', 'tricaps-coordinator-ingress');
    expect(policy.spec.ingress.map((r: Obj) => r.ports[0].port).sort()).toEqual(
      [port(c, 'grpc'), port(c, 'metrics')].sort(),
    );
    expect(policy.spec.podSelector.matchLabels).toEqual(coord.spec.selector.matchLabels);
    expect(policy.spec.ingress[0].from[0].podSelector.matchLabels).toEqual(workers.spec.selector.matchLabels);
    // Secrets and volumes: the files the TLS flags name are in the mounted secret.
    for (const [set, secret] of [
      [coord, 'tricaps-coordinator-tls'],
      [workers, 'tricaps-worker-tls'],
    ] as const) {
      const spec = set.spec.template.spec;
      expect(spec.volumes.find((v: Obj) => v.name === 'tls').secret.secretName).toBe(secret);
      const keys = Object.keys(find('Secret', secret).stringData);
      for (const flag of ['--tls-cert', '--tls-key', '--tls-ca'])
        expect(keys).toContain(arg(spec.containers[0].args, flag)!.replace('/tls/', ''));
      expect(spec.containers[0].env[0].valueFrom.secretKeyRef).toEqual({ name: 'tricaps-join-token', key: 'token' });
    }
    // The coordinator has time to write its SIGTERM checkpoint, and keeps checkpoints on a volume.
    expect(coord.spec.template.spec.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(120);
    expect(coord.spec.volumeClaimTemplates[0].metadata.name).toBe('checkpoints');
    expect(arg(c.args, '--checkpoint-dir')).toBe(c.volumeMounts.find((m: Obj) => m.name === 'checkpoints').mountPath);
    expect(c.args).toContain('--resume');
    expect(w.volumeMounts.find((m: Obj) => m.name === 'data').readOnly).toBe(true);
    expect(workers.spec.template.spec.affinity.podAntiAffinity).toBeDefined();
  });

  it('alerts and the dashboard use only metrics the code exports', () => {
    const exported = exportedMetricNames();
    const rule = find('PrometheusRule', 'tricaps');
    const alerts = rule.spec.groups.flatMap((g: Obj) => g.rules);
    expect(alerts.map((r: Obj) => r.alert).sort()).toEqual([
      'TricapsCheckpointStale',
      'TricapsLossNotFinite',
      'TricapsRunStalled',
      'TricapsThroughputDrop',
      'TricapsWorkerLost',
    ]);
    for (const r of alerts)
      for (const m of usedTricapsMetrics(r.expr)) expect(exported.has(m), `${r.alert}: ${m}`).toBe(true);
    const dash = JSON.parse(readFileSync('deploy/grafana/tricaps.json', 'utf8'));
    const exprs: string[] = dash.panels.flatMap((p: Obj) => (p.targets ?? []).map((t: Obj) => t.expr));
    expect(exprs.length).toBeGreaterThanOrEqual(12);
    for (const e of exprs) for (const m of usedTricapsMetrics(e)) expect(exported.has(m), `dashboard: ${m}`).toBe(true);
    const used = new Set(exprs.flatMap(usedTricapsMetrics));
    for (const needed of [
      'tricaps_images_per_second',
      'tricaps_loss',
      'tricaps_active_triplet_ratio',
      'tricaps_step_phase_seconds_sum',
      'tricaps_worker_step_lag_seconds',
      'tricaps_world_size',
      'tricaps_worker_joins_total',
      'tricaps_worker_losses_total',
      'tricaps_checkpoint_last_success_timestamp_seconds',
      'tricaps_recall_at_k_ratio',
      'tricaps_info',
    ]) {
      expect(used.has(needed), needed).toBe(true);
    }
  });

  it('the dashboard: a row per question, a unit on every panel, every query for the chosen run', () => {
    const dash = JSON.parse(readFileSync('deploy/grafana/tricaps.json', 'utf8'));
    const rows = dash.panels.filter((p: Obj) => p.type === 'row').map((p: Obj) => p.title);
    expect(rows).toEqual(['Is it training?', 'Is it fast?', 'Is the fleet healthy?', 'Is it learning?', 'Is it safe?']);
    const run = dash.templating.list.find((v: Obj) => v.name === 'run');
    expect(run.query.query).toBe('label_values(tricaps_info, run)');
    const panels = dash.panels.filter((p: Obj) => p.type !== 'row');
    expect(new Set(dash.panels.map((p: Obj) => p.id)).size).toBe(dash.panels.length);
    for (const p of panels) {
      expect(p.fieldConfig.defaults.unit, `${p.title}: unit`).toMatch(
        /^(s|short|bytes|Bps|percentunit|bool_yes_no|suffix: .+)$/,
      );
      expect(p.fieldConfig.defaults.unit, `${p.title}: a unit that says something`).not.toBe('none');
      for (const t of p.targets)
        for (const m of usedTricapsMetrics(t.expr))
          expect(t.expr, `${p.title}: ${m} for the chosen run`).toMatch(new RegExp(`${m}\\{run="\\$run"`));
    }
    // Rows come before their panels, top to bottom.
    const ys = dash.panels.map((p: Obj) => p.gridPos.y);
    expect([...ys].sort((a, b) => a - b)).toEqual(ys);
  });

  it('overlays patch the workers the base defines', () => {
    const gpu = load(join(ROOT, 'overlays/gpu/kustomization.yaml'))[0];
    expect(gpu.patches[0].target).toEqual({ kind: 'StatefulSet', name: 'tricaps-worker' });
    const workers = find('StatefulSet', 'tricaps-worker');
    expect(workers.spec.template.spec.containers[0].args[2]).toMatch(/^--engine=/); // the index the patch replaces
    expect(gpu.patches[0].patch).toContain('nvidia.com~1gpu');
  });
});

// kustomize itself (kubectl kustomize) where it is installed; the Debian archive has no kubectl
// recent enough, so this one runs only where a newer kubectl is on the PATH (and says so when not).
const kubectl = spawnSync('kubectl', ['version', '--client'], { encoding: 'utf8' });
describe('kustomize build', () => {
  it.skipIf(kubectl.status !== 0).each(['cpu', 'gpu'])(
    `overlays/%s builds, and its output passes the schemas${kubectl.status === 0 ? '' : ' (skipped: no kubectl with kustomize on the PATH)'}`,
    (overlay) => {
      const out = spawnSync('kubectl', ['kustomize', join(ROOT, 'overlays', overlay)], { encoding: 'utf8' });
      expect(out.status, out.stderr).toBe(0);
      const built = parseAllDocuments(out.stdout).map((d) => d.toJS() as Obj);
      for (const o of built)
        expect(() => new MODELS[o.kind](o).validate(), `${o.kind}/${o.metadata.name}`).not.toThrow();
      const worker = built.find((o) => o.kind === 'StatefulSet' && o.metadata.name === 'tricaps-worker')!;
      const c = worker.spec.template.spec.containers[0];
      expect(c.image).toBe(`registry.example.com/tricaps:${overlay}`);
      expect(c.args).toContain(overlay === 'gpu' ? '--engine=tensorflow' : '--engine=wasm');
      expect(c.resources.limits['nvidia.com/gpu']).toBe(overlay === 'gpu' ? 1 : undefined);
      expect(built.every((o) => o.metadata.labels?.['app.kubernetes.io/part-of'] === 'tricaps')).toBe(true);
    },
  );
});

describe('deploy/docker', () => {
  it.each(['Dockerfile.cpu', 'Dockerfile.gpu'])('%s runs as a non-root user under tini with a health check', (file) => {
    const text = readFileSync(join('deploy/docker', file), 'utf8');
    expect(text).toMatch(/^USER 10001$/m);
    expect(text).toMatch(/^ENTRYPOINT \["\/usr\/bin\/tini", "--", "node", "\/app\/dist\/cli.js"\]$/m);
    expect(text).toMatch(/^HEALTHCHECK .*health-check/m);
  });

  it('the GPU image matches tfjs-node-gpu 4.22 (CUDA 11.2, cuDNN 8)', () => {
    const text = readFileSync('deploy/docker/Dockerfile.gpu', 'utf8');
    expect(text).toMatch(/^FROM nvidia\/cuda:11\.2\.\d+-cudnn8-runtime/m);
    expect(text).toContain('@tensorflow/tfjs-node-gpu@4.22.0');
  });
});
