// The chains a packed queue gave out, newest last: where each started (ring slot and wrap counter) and
// its buffer id, so that rewind() can give the newest back (the queue's next available position moves
// back to where the oldest of them started, and their ids are free again). A ring of `size` entries:
// more chains than the ring holds are never out at once.
export class TakenChains {
  private readonly pos: Uint16Array;
  private readonly wrap: Uint8Array;
  private readonly id: Uint16Array;
  private top = 0;
  private len = 0;
  /** set by dropNewest(): the chain given back */
  lastPos = 0;
  lastWrap = true;
  lastId = 0;

  constructor(private readonly size: number) {
    this.pos = new Uint16Array(size);
    this.wrap = new Uint8Array(size);
    this.id = new Uint16Array(size);
  }

  clear(): void {
    this.len = 0;
  }

  /** A chain starting at `pos` under wrap counter `wrap`, with buffer `id`, was given out. */
  push(pos: number, wrap: boolean, id: number): void {
    const h = this.top;
    this.pos[h] = pos;
    this.wrap[h] = wrap ? 1 : 0;
    this.id[h] = id;
    this.top = h + 1 === this.size ? 0 : h + 1;
    if (this.len < this.size) this.len++;
  }

  /** Forget the newest chain, its start and id in lastPos, lastWrap, lastId; false when none is left. */
  dropNewest(): boolean {
    if (this.len === 0) return false;
    this.top = this.top === 0 ? this.size - 1 : this.top - 1;
    this.len--;
    this.lastPos = this.pos[this.top];
    this.lastWrap = this.wrap[this.top] === 1;
    this.lastId = this.id[this.top];
    return true;
  }
}
