// A dataplane thread's view of the RSS state (rss-state.ts) and the hash of a received frame: the copy
// of the state it works under (taken once per pass when the main thread changed it), the Toeplitz table
// of its key, and a frame's report type and hash (rss-classify.ts, toeplitz.ts). Used where frames are
// steered between pairs (rss-rx.ts) and where a pair delivers its frames itself with hash reports
// (net-rx.ts).
import type { GuestBytes } from '../virtio/guest-bytes.js';
import type { PacketBatch } from '../drivers/api.js';
import { native } from '../native.js';
import { RssWords, RSS_MODE, newRssSnapshot, type RssSnapshot } from './rss-state.js';
import { CLASSIFY_REACH, classifyFrame, HASH_INPUT_LEN, HASH_REPORT } from './rss-classify.js';
import { MAX_HASH_INPUT, toeplitzHash, toeplitzTable } from './toeplitz.js';

export class RssHasher {
  private readonly rss: RssWords;
  /** the state this thread works under */
  readonly snap: RssSnapshot = newRssSnapshot();
  private readonly table = new Uint32Array(MAX_HASH_INPUT * 256);
  /** the key `table` was made from */
  private tableKey = new Uint8Array(0);
  private readonly input = new Uint8Array(MAX_HASH_INPUT);
  /** a frame's first bytes, gathered when its first segment does not hold it whole */
  private readonly gathered = new Uint8Array(CLASSIFY_REACH);
  /** the hash of the last frame classified (0 when its report is NONE) */
  value = 0;

  constructor(rss: SharedArrayBuffer) {
    this.rss = new RssWords(rss);
  }

  /** Take the RSS state the main thread changed (a new key makes a new table); once per pass. */
  refresh(): void {
    const s = this.snap;
    if (this.rss.seq === s.seq || !this.rss.read(s)) return;
    const k = s.key.subarray(0, s.keyLen);
    if (k.length === this.tableKey.length && k.every((b, i) => b === this.tableKey[i])) return;
    this.tableKey = k.slice();
    toeplitzTable(k, this.table);
  }

  /** The report type of the frame p[at..at+len) (HASH_REPORT; NONE while hashing is off); its hash in `value`. */
  classify(p: Uint8Array, at: number, len: number): number {
    this.value = 0;
    if (this.snap.mode === RSS_MODE.OFF) return HASH_REPORT.NONE;
    const report = classifyFrame(p, at, len, this.snap.hashTypes, this.input);
    if (report !== HASH_REPORT.NONE) this.value = toeplitzHash(this.table, this.input, HASH_INPUT_LEN[report]);
    return report;
  }

  /**
   * classify() for packet i of `b` (`len` bytes the driver wrote over its guest-memory segments): in
   * place where its first segment holds it whole (every layout Linux gives a frame's headers), else
   * over its first CLASSIFY_REACH bytes gathered (all classification can read).
   */
  classifyPacket(bytes: GuestBytes, b: PacketBatch, i: number, len: number): number {
    const iov = b.iov;
    const s0 = b.iovStart[i];
    const s1 = b.iovStart[i + 1];
    if (s0 === s1) return this.classify(this.gathered, 0, 0);
    const off = iov[3 * s0 + 1];
    if (iov[3 * s0 + 2] >= len) {
      // (a frame is far smaller than a window's overlap: it lies whole in the window of its first byte)
      const w = bytes.window(off);
      return this.classify(w.u8, off - w.base, len);
    }
    const want = Math.min(len, CLASSIFY_REACH);
    let got = 0;
    for (let s = s0; s < s1 && got < want; s++) {
      const n = Math.min(iov[3 * s + 2], want - got);
      native.copy(this.gathered, got, bytes.buffer, iov[3 * s + 1], n);
      got += n;
    }
    return this.classify(this.gathered, 0, got);
  }
}
