// Embedding files for vector stores, written row by row (memory stays one batch, whatever the
// catalogue's size):
//   npy    FILE.npy: float32 [rows, dim], NumPy format 1.0 (np.load reads it), and beside it
//          FILE.meta.jsonl: one line per row, {row, path, item, category, predicted}
//   jsonl  one line per image: {path, item, category, predicted, embedding}
import { createWriteStream, type WriteStream } from 'node:fs';
import { once } from 'node:events';

export const EMBEDDING_FORMATS = ['npy', 'jsonl'] as const;
export type EmbeddingFormat = (typeof EMBEDDING_FORMATS)[number];

export interface EmbeddingRow {
  /** Image path (relative to the catalogue root, or as given). */
  path: string;
  /** Item (product) name; null for images outside a catalogue. */
  item: string | null;
  /** True category name; null for images outside a catalogue. */
  category: string | null;
  /** The category of the longest capsule. */
  predicted: string;
}

/** The NumPy 1.0 header of a little-endian float32 C-order array of the given shape. */
export function npyHeader(shape: number[]): Buffer {
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`;
  // magic (6) + version (2) + header length (2) + dict + padding + '\n', a multiple of 64 bytes.
  const unpadded = 10 + dict.length + 1;
  const total = Math.ceil(unpadded / 64) * 64;
  const header = Buffer.alloc(total, 0x20);
  header.write('\x93NUMPY', 0, 'latin1');
  header[6] = 1;
  header[7] = 0;
  header.writeUInt16LE(total - 10, 8);
  header.write(dict, 10, 'latin1');
  header[total - 1] = 0x0a;
  return header;
}

export class EmbeddingWriter {
  private written = 0;

  private constructor(
    private readonly format: EmbeddingFormat,
    private readonly rows: number,
    private readonly dim: number,
    private readonly main: WriteStream,
    private readonly meta?: WriteStream,
  ) {}

  /** Opens `path` for `rows` embeddings of `dim` floats (npy also writes `<path minus .npy>.meta.jsonl`). */
  static async open(path: string, format: EmbeddingFormat, rows: number, dim: number): Promise<EmbeddingWriter> {
    const main = createWriteStream(path);
    await once(main, 'open');
    let meta: WriteStream | undefined;
    if (format === 'npy') {
      meta = createWriteStream(metaPathOf(path));
      await once(meta, 'open');
      main.write(npyHeader([rows, dim]));
    }
    return new EmbeddingWriter(format, rows, dim, main, meta);
  }

  /** Appends rows; `vectors` is [rows.length, dim] row-major. Waits when the disk is behind. */
  async write(rows: EmbeddingRow[], vectors: Float32Array): Promise<void> {
    if (vectors.length !== rows.length * this.dim)
      throw new Error(`embedding file: ${vectors.length} values for ${rows.length} rows of ${this.dim}`);
    if (this.written + rows.length > this.rows)
      throw new Error(`embedding file: more than the ${this.rows} rows announced`);
    if (this.format === 'npy') {
      const bytes = Buffer.from(vectors.buffer, vectors.byteOffset, vectors.byteLength);
      const lines = rows.map((r, i) => JSON.stringify({ row: this.written + i, ...r })).join('\n');
      await Promise.all([drained(this.main, Buffer.from(bytes)), drained(this.meta!, `${lines}\n`)]);
    } else {
      const lines = rows.map((r, i) =>
        JSON.stringify({ ...r, embedding: Array.from(vectors.subarray(i * this.dim, (i + 1) * this.dim)) }),
      );
      await drained(this.main, `${lines.join('\n')}\n`);
    }
    this.written += rows.length;
  }

  async close(): Promise<void> {
    if (this.written !== this.rows) throw new Error(`embedding file: ${this.written} of ${this.rows} rows written`);
    for (const s of [this.main, this.meta]) {
      if (!s) continue;
      s.end();
      await once(s, 'close');
    }
  }

  /** Closes without the row check (an interrupted run); the files are incomplete. */
  abort(): void {
    this.main.destroy();
    this.meta?.destroy();
  }
}

export function metaPathOf(path: string): string {
  return `${path.replace(/\.npy$/i, '')}.meta.jsonl`;
}

function drained(stream: WriteStream, chunk: Buffer | string): Promise<void> {
  return stream.write(chunk) ? Promise.resolve() : once(stream, 'drain').then(() => undefined);
}
