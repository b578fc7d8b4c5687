// `tricaps embed` as a user runs it: real child processes on a synthetic catalogue and a checkpoint
// trained for two steps; the vectors it writes must give `tricaps eval`'s Recall@K.
import { tricaps } from './cli-runner.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { recallAtK } from '../src/shared/eval/recall.js';
import { globRegex } from '../src/cli/embed.js';
import { npyHeader } from '../src/shared/eval/embedding-file.js';

/** Reads a .npy as NumPy's format 1.0 says: magic, version, header dict, then little-endian data. */
function readNpy(path: string): { shape: number[]; data: Float32Array } {
  const b = readFileSync(path);
  expect(b.subarray(0, 6).toString('latin1')).toBe('\x93NUMPY');
  expect([b[6], b[7]]).toEqual([1, 0]);
  const headerLength = b.readUInt16LE(8);
  expect((10 + headerLength) % 64).toBe(0);
  const header = b.subarray(10, 10 + headerLength).toString('latin1');
  expect(header).toMatch(/^\{'descr': '<f4', 'fortran_order': False, 'shape': \(\d+, \d+\), \} *\n$/);
  const shape = /\((\d+), (\d+)\)/.exec(header)!.slice(1).map(Number);
  const body = b.subarray(10 + headerLength);
  expect(body.byteLength).toBe(shape[0] * shape[1] * 4);
  return { shape, data: new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)) };
}

const meta = (path: string) =>
  readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

let dir = '';
let root = '';
let ck = '';
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tricaps-embed-'));
  root = join(dir, 'shop');
  ck = join(dir, 'ck');
  expect(
    (
      await tricaps(
        'data',
        'synth',
        '--out',
        root,
        '--items',
        '24',
        '--categories',
        '3',
        '--image-size',
        '32',
        '--seed',
        '5',
      )
    ).code,
  ).toBe(0);
  const train = await tricaps(
    'train',
    '--data',
    root,
    '--engine',
    'wasm',
    '--steps',
    '2',
    '--batch-triplets',
    '4',
    '--image-size',
    '32',
    '--checkpoint-dir',
    ck,
    '--json',
  );
  expect(train.code, train.stderr).toBe(0);
}, 240_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('tricaps embed', () => {
  it.each(['predicted', 'oracle'] as const)(
    'writes .npy vectors whose retrieval equals tricaps eval (mask %s)',
    async (mask) => {
      const out = (split: string) => join(dir, `${split}-${mask}.npy`);
      for (const split of ['query', 'gallery']) {
        const r = await tricaps(
          'embed',
          '--checkpoint',
          ck,
          '--data',
          root,
          '--split',
          split,
          '--mask',
          mask,
          '--engine',
          'wasm',
          '--batch',
          '7',
          '--out',
          out(split),
        );
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout).toMatch(new RegExp(`embeddings of \\d+ floats \\(mask ${mask}`));
      }
      const q = readNpy(out('query'));
      const g = readNpy(out('gallery'));
      const qm = meta(out('query').replace(/\.npy$/, '.meta.jsonl'));
      const gm = meta(out('gallery').replace(/\.npy$/, '.meta.jsonl'));
      expect(qm).toHaveLength(q.shape[0]);
      expect(qm[0]).toMatchObject({
        row: 0,
        path: expect.stringMatching(/^img\//),
        item: expect.stringMatching(/^id_/),
        category: expect.any(String),
        predicted: expect.any(String),
      });
      const dim = q.shape[1];
      const distances: number[] = [];
      for (let i = 0; i < q.shape[0]; i++) {
        for (let j = 0; j < g.shape[0]; j++) {
          let s = 0;
          for (let k = 0; k < dim; k++) s += (q.data[i * dim + k] - g.data[j * dim + k]) ** 2;
          distances.push(s);
        }
      }
      const items = (m: { item: string }[]) => m.map((x) => Number(x.item.replace(/\D/g, '')));
      const mine = recallAtK(distances, items(qm), items(gm));
      const evaluation = await tricaps(
        'eval',
        '--checkpoint',
        ck,
        '--data',
        root,
        '--engine',
        'wasm',
        '--mask',
        mask,
        '--json',
      );
      expect(evaluation.code, evaluation.stderr).toBe(0);
      const theirs = JSON.parse(evaluation.stdout.trim().split('\n').pop()!);
      expect(mine.recall).toEqual(theirs.recall);
      expect(mine.mapAtR).toBeCloseTo(theirs.mapAtR, 6);
      expect(mine.queries).toBe(theirs.queries);
      // NumPy reads it, where NumPy is installed (it is on our machines through pip; else the header
      // was checked above as NumPy's format 1.0 specifies).
      let numpy = true;
      try {
        execFileSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' });
      } catch {
        numpy = false;
      }
      if (numpy) {
        const py = execFileSync(
          'python3',
          [
            '-c',
            `import numpy as np; a = np.load(${JSON.stringify(out('query'))}); print(a.dtype, a.shape, repr(float(a[1, 2])))`,
          ],
          { encoding: 'utf8' },
        ).trim();
        expect(py).toBe(
          `float32 (${q.shape[0]}, ${dim}) ${JSON.stringify(q.data[dim + 2]).replace(/^(-?\d+)$/, '$1.0')}`.replace(
            /"/g,
            '',
          ),
        );
      }
    },
  );

  it('writes jsonl, and embeds image files by glob; refuses what cannot work', async () => {
    const jsonl = join(dir, 'all.jsonl');
    const r = await tricaps('embed', '--checkpoint', ck, '--data', root, '--out', jsonl, '--engine', 'wasm');
    expect(r.code, r.stderr).toBe(0);
    const lines = meta(jsonl);
    const partition = readFileSync(join(root, 'Eval/list_eval_partition.txt'), 'utf8').trim().split('\n').slice(2);
    expect(lines).toHaveLength(partition.length);
    expect(lines[0]).toMatchObject({
      path: expect.any(String),
      item: expect.stringMatching(/^id_/),
      predicted: expect.any(String),
    });
    const norm = Math.hypot(...lines[0].embedding);
    expect(norm).toBeCloseTo(1, 4); // predicted mask: one unit capsule kept
    const files = await tricaps(
      'embed',
      '--checkpoint',
      ck,
      '--images',
      join(root, 'img/**/*.png'),
      '--out',
      join(dir, 'files.jsonl'),
      '--engine',
      'wasm',
    );
    expect(files.code, files.stderr).toBe(0);
    const fileLines = meta(join(dir, 'files.jsonl'));
    expect(fileLines).toHaveLength(partition.length);
    expect(fileLines[0]).toMatchObject({ item: null, category: null, predicted: expect.any(String) });
    for (const [args, message] of [
      [
        ['--images', join(root, 'img/**/*.png'), '--mask', 'oracle', '--out', join(dir, 'x.npy')],
        /--mask oracle needs the true categories/,
      ],
      [['--data', root, '--images', 'x', '--out', join(dir, 'x.npy')], /give either --data DIR or --images GLOB/],
      [['--images', join(dir, 'nothing/*.jpg'), '--out', join(dir, 'x.npy')], /no file matches/],
      [['--data', root, '--out', join(dir, 'x.bin')], /say --format npy or jsonl/],
    ] as const) {
      const bad = await tricaps('embed', '--checkpoint', ck, ...args);
      expect(bad.code, bad.stderr).toBe(2);
      expect(bad.stderr).toMatch(message);
    }
  });

  it('matches globs and writes NumPy headers as the format says', () => {
    expect(globRegex('**/*.jpg').test('a/b/x.jpg')).toBe(true);
    expect(globRegex('**/*.jpg').test('x.jpg')).toBe(true);
    expect(globRegex('**/*.jpg').test('x.jpeg')).toBe(false);
    expect(globRegex('img/*/id_?1/*.png').test('img/MEN/id_01/a.png')).toBe(true);
    expect(globRegex('img/*/id_?1/*.png').test('img/MEN/x/id_01/a.png')).toBe(false);
    const h = npyHeader([3, 368]);
    expect(h.byteLength % 64).toBe(0);
    expect(h.subarray(10).toString('latin1')).toMatch(
      /^\{'descr': '<f4', 'fortran_order': False, 'shape': \(3, 368\), \} +\n$/,
    );
  });
});
