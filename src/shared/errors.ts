// User-facing errors: a UsageError carries a message that names what was wrong and what to do.
// The CLI prints it without a stack trace and exits with code 2; anything else is a bug.

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/**
 * A one-line explanation for failures that are limits, not bugs, or undefined. The wasm engine
 * aborts (or faults) inside WebAssembly when its 32-bit heap (at most 4 GB) runs out, e.g. SC at
 * 256px with 96 images per step.
 */
export function explainResourceFailure(err: unknown): string | undefined {
  if (err instanceof WebAssembly.RuntimeError) {
    return `the wasm engine failed inside WebAssembly (${err.message.split('.')[0]}), almost always because its memory (at most 4 GB) ran out. Use fewer images per step (--batch-triplets) or a smaller --image-size, or a GPU engine (--engine webgpu or tensorflow)`;
  }
  return undefined;
}

/** A library's error message on one line (decoders report a trail of lines; a log line is one). */
export function oneLine(err: unknown): string {
  return String((err as Error)?.message ?? err)
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join('; ');
}
