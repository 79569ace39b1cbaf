// A frame's place in guest memory as the driver API takes it: the buffers of a chain after the
// virtio-net header, as iov segments. Shared by transmit (net-pair.ts) and receive (rx-batch.ts,
// rx-merge.ts), so all of them leave out the header and empty buffers the same way.

/**
 * Lay pieces [p0, p1) of offsets/lens (guest-memory offsets and lengths) out as iov triples (buffer 0,
 * offset, length) in `iov` from segment `at`, leaving out their first `skip` bytes (the header, which
 * may span pieces) and every piece left empty. Returns the segment after the last one written.
 */
export function segmentsAfter(offsets: Float64Array, lens: Uint32Array, p0: number, p1: number, skip: number, iov: Float64Array, at: number): number {
  for (let p = p0; p < p1; p++) {
    let off = offsets[p];
    let l = lens[p];
    if (skip > 0) {
      const k = Math.min(skip, l);
      off += k;
      l -= k;
      skip -= k;
    }
    if (l === 0) continue;
    iov[3 * at] = 0;
    iov[3 * at + 1] = off;
    iov[3 * at + 2] = l;
    at++;
  }
  return at;
}
