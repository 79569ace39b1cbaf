// A driver for dataplane-thread tests: each queue receives the frames its init lists (number arrays),
// one per call, then nothing; what is sent is discarded. No fd: the thread asks it while it has frames.
export function openQueue(init) {
  const frames = (init?.frames ?? []).map((f) => Uint8Array.from(f));
  return {
    pollFd: -1,
    drops: 0,
    wouldBlock: false,
    transmit(batch) {
      return batch.count;
    },
    receive(b, mem) {
      const f = frames.shift();
      if (!f) return 0;
      const u8 = new Uint8Array(mem);
      let at = 0;
      for (let k = b.iovStart[0]; k < b.iovStart[1] && at < f.length; k++) {
        const n = Math.min(b.iov[3 * k + 2], f.length - at);
        u8.set(f.subarray(at, at + n), b.iov[3 * k + 1]);
        at += n;
      }
      b.len[0] = f.length;
      b.meta.fill(0);
      return 1;
    },
    close() {},
  };
}
