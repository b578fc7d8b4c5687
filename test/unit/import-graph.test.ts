// Architecture: the source tree's imports run one way. shared/ is the base every process uses;
// coordinator/ and worker/ are two sides of the wire and never import each other (what both need
// lives in shared/); nothing below the CLI imports the CLI or the benchmarks; no import cycles.
import { describe, expect, it } from 'vitest';
import {
  findCycles,
  importsOf,
  layerViolations,
  readImportGraph,
  type ImportGraph,
  type LayerRule,
} from '../import-graph.js';

const RULES: LayerRule[] = [
  { from: 'src/shared', notTo: ['src/coordinator', 'src/worker', 'src/cli', 'src/bench', 'src/report', 'src/cli.ts'] },
  { from: 'src/coordinator', notTo: ['src/worker', 'src/cli', 'src/bench', 'src/cli.ts'] },
  { from: 'src/worker', notTo: ['src/coordinator', 'src/cli', 'src/bench', 'src/cli.ts'] },
];

const graphOf = (edges: Record<string, string[]>): ImportGraph =>
  new Map(Object.entries(edges).map(([k, v]) => [k, new Set(v)]));

describe('import graph', () => {
  const graph = readImportGraph(process.cwd());

  it('reads every source module and its imports (static, type-only, side-effect and dynamic)', () => {
    expect(graph.size).toBeGreaterThan(60);
    expect(graph.get('src/shared/train/gradients.ts')).toContain('src/shared/model/device-mining.ts');
    const parsed = importsOf(
      [
        "import type { A } from './a.js';",
        "import '../b.js';",
        "const c = await import('./c/d.js');",
        "export { e } from './e.js';",
        "import x from 'pkg';",
      ].join('\n'),
      'src/shared/m.ts',
    );
    expect([...parsed].sort()).toEqual(['src/b.ts', 'src/shared/a.ts', 'src/shared/c/d.ts', 'src/shared/e.ts']);
  });

  it('has no cycles', () => {
    expect(findCycles(graph).map((c) => c.join(' -> '))).toEqual([]);
  });

  it('keeps the layers: shared imports neither side, coordinator and worker never import each other', () => {
    expect(layerViolations(graph, RULES)).toEqual([]);
  });

  it('the checks fail on a cycle and on coordinator <-> worker imports (the checker itself)', () => {
    const bad = graphOf({
      'src/coordinator/a.ts': ['src/worker/b.ts'],
      'src/worker/b.ts': ['src/shared/c.ts'],
      'src/shared/c.ts': ['src/shared/d.ts'],
      'src/shared/d.ts': ['src/shared/c.ts', 'src/coordinator/a.ts'],
    });
    expect(findCycles(bad).map((c) => c.join(' -> '))).toEqual([
      'src/shared/c.ts -> src/shared/d.ts -> src/shared/c.ts',
      'src/coordinator/a.ts -> src/worker/b.ts -> src/shared/c.ts -> src/shared/d.ts -> src/coordinator/a.ts',
    ]);
    expect(findCycles(graphOf({ 'src/shared/x.ts': ['src/shared/y.ts'], 'src/shared/y.ts': [] }))).toEqual([]);
    expect(layerViolations(bad, RULES)).toEqual([
      'src/coordinator/a.ts imports src/worker/b.ts',
      'src/shared/d.ts imports src/coordinator/a.ts',
    ]);
  });
});
