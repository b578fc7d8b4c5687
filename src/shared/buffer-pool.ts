// Recycled Float32Arrays for decoded tensors (uploads on the coordinator, ring hops on a worker):
// released once used and decoded into again next step, because a fresh multi-megabyte array costs
// page faults and garbage collection every step (on our VMs about 4 ms per megabyte). Bounded.

export class BufferPool {
  private readonly free = new Map<number, Float32Array[]>();
  private held = 0;
  /** Buffers this pool handed out: views of them come back as the whole array (a ring's vector). */
  private readonly ours = new WeakSet<ArrayBufferLike>();

  constructor(private readonly maxBytes = 512 << 20) {}

  take(size: number): Float32Array {
    const list = this.free.get(size);
    const hit = list?.pop();
    if (hit) {
      this.held -= hit.byteLength;
      return hit;
    }
    const fresh = new Float32Array(size);
    this.ours.add(fresh.buffer);
    return fresh;
  }

  /**
   * Takes arrays back. A view of an array this pool handed out returns that whole array (once, however
   * many of its views come back); a view of anything else is not kept (it would alias its owner).
   */
  release(arrays: Iterable<Float32Array>): void {
    const seen = new Set<ArrayBufferLike>();
    for (const a of arrays) {
      if (seen.has(a.buffer)) continue;
      seen.add(a.buffer);
      const whole = a.byteOffset === 0 && a.byteLength === a.buffer.byteLength;
      if (!whole && !this.ours.has(a.buffer)) continue;
      const array = whole ? a : new Float32Array(a.buffer);
      if ((this.free.get(array.length) ?? []).some((x) => x.buffer === array.buffer)) continue;
      if (this.held + array.byteLength > this.maxBytes) return;
      this.held += array.byteLength;
      this.free.set(array.length, [...(this.free.get(array.length) ?? []), array]);
    }
  }
}
