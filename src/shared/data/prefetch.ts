// Keeps the next batch loading while the current step computes. Decoding with sharp runs on libuv's
// thread pool, so it overlaps the (synchronous) tensor work; the wait that remains is reported per
// step as data-wait time.

export class Prefetcher<T> {
  private readonly pending = new Map<number, Promise<T>>();

  constructor(
    private readonly load: (index: number) => Promise<T>,
    private readonly depth = 1,
  ) {}

  /** The item for `index` and how long we waited for it; starts loading the next `depth` items. */
  async take(index: number): Promise<{ value: T; waitSeconds: number }> {
    const started = performance.now();
    const promise = this.pending.get(index) ?? this.load(index);
    this.pending.delete(index);
    for (let ahead = 1; ahead <= this.depth; ahead++) {
      if (!this.pending.has(index + ahead)) {
        const next = this.load(index + ahead);
        next.catch(() => undefined); // surfaced when taken
        this.pending.set(index + ahead, next);
      }
    }
    const value = await promise;
    return { value, waitSeconds: (performance.now() - started) / 1000 };
  }

  /** Drops loads that will not be taken (their results are discarded). */
  clear(): void {
    this.pending.clear();
  }
}
