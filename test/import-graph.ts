// The source tree's import graph, for the architecture test: which module imports which (static and
// dynamic relative imports, type-only ones included), its cycles, and imports that cross the
// layering rules. Pure functions over a graph so the test can check the checker itself.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';

/** module (path relative to the root, .ts) -> modules it imports */
export type ImportGraph = Map<string, Set<string>>;

export function readImportGraph(root: string, dir = 'src', skip = /\/gen\//): ImportGraph {
  const graph: ImportGraph = new Map();
  const walk = (d: string) => {
    for (const e of readdirSync(join(root, d), { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts') && !skip.test(`/${p}`))
        graph.set(p, importsOf(readFileSync(join(root, p), 'utf8'), p));
    }
  };
  walk(dir);
  // Imports of generated code stay edges to it, but generated code is not walked.
  return graph;
}

/** Relative module specifiers in a TypeScript source, resolved against its path (.js -> .ts). */
export function importsOf(source: string, path: string): Set<string> {
  const out = new Set<string>();
  const pattern = /(?:\bfrom\s+|\bimport\s*\(\s*|^\s*import\s+)['"](\.{1,2}\/[^'"]+)['"]/gm;
  for (const m of source.matchAll(pattern)) out.add(normalize(join(dirname(path), m[1])).replace(/\.js$/, '.ts'));
  return out;
}

/** Every elementary cycle's modules, each once (as found by a depth-first search). */
export function findCycles(graph: ImportGraph): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (m: string) => {
    state.set(m, 'open');
    stack.push(m);
    for (const next of graph.get(m) ?? []) {
      if (!graph.has(next)) continue;
      if (state.get(next) === 'open') cycles.push([...stack.slice(stack.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    stack.pop();
    state.set(m, 'done');
  };
  for (const m of [...graph.keys()].sort()) if (!state.has(m)) visit(m);
  return cycles;
}

/** A rule: modules under `from` must not import modules under any of `notTo`. */
export interface LayerRule {
  from: string;
  notTo: string[];
}

export function layerViolations(graph: ImportGraph, rules: LayerRule[]): string[] {
  const out: string[] = [];
  const under = (m: string, dir: string) => !relative(dir, m).startsWith('..');
  for (const [m, deps] of graph) {
    for (const rule of rules) {
      if (!under(m, rule.from)) continue;
      for (const d of deps) for (const banned of rule.notTo) if (under(d, banned)) out.push(`${m} imports ${d}`);
    }
  }
  return out.sort();
}
