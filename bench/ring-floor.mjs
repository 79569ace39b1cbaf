// The floor of JavaScript for bench/engine-micro.mjs: ring-micro.c's split device loop written as one
// flat JavaScript function over the same ring layout, with no layer between ring and copy (no queue
// interface, chain batch, packet batch or driver). Per packet it does what the C loop does (pop a
// one-descriptor chain, the same checks, TX: header check and the frame copied out, RX: frame and header
// written, the used entry; the used index once per batch of 32); the frames are copied as the engine's
// drivers copy them, a list of memmoves per batch in one addon call (native.copyv), the only copy in
// JavaScript that is not byte by byte on shared memory. What the engine costs above this is its layers;
// what this costs above the C loop is JavaScript's.
const BATCH = 32;
const HDR = 12;
const [F_NEXT, F_WRITE, F_INDIRECT] = [1, 2, 4];
// state words, as ring-micro.c's: next avail, next used, wrap, driver slot, driver wrap, RX frame counter
const [S_AVAIL, S_USED, , , , S_SEQ] = [0, 1, 2, 3, 4, 5];

/**
 * A device loop over the ring `cfg` (engine-micro's layRing: desc, avail, used, size, frame, rx) in
 * `sab`; `copyv` is native.copyv. Returns `device(state, n)`: moves up to n packets, returns how many.
 */
export function floorDevice(sab, plain, cfg, copyv) {
  const u16 = new Uint16Array(sab);
  const dv = new DataView(sab);
  const [desc, avail, used, size, frame, rxFlag] = cfg;
  const rx = rxFlag !== 0;
  const memLen = sab.byteLength;
  const mask = size - 1;
  const own = new ArrayBuffer(9018);
  const ownU8 = new Uint8Array(own);
  for (let i = 0; i < ownU8.length; i++) ownU8[i] = i & 0xff;
  ownU8.fill(0xff, 0, 6);
  const list = new Float64Array(5 * BATCH);
  const at = new Float64Array(BATCH);
  return (s, n) => {
    let done = 0;
    while (done < n) {
      const availIdx = Atomics.load(u16, (avail + 2) >> 1);
      let k = 0;
      for (; k < BATCH && done < n && (s[S_AVAIL] & 0xffff) !== availIdx; k++, done++) {
        const head = dv.getUint16(avail + 4 + 2 * (s[S_AVAIL] & mask), true);
        s[S_AVAIL] = (s[S_AVAIL] + 1) & 0xffff;
        if (head >= size) return done;
        const d = desc + 16 * head;
        const addr = dv.getUint32(d, true) + dv.getUint32(d + 4, true) * 0x100000000;
        const len = dv.getUint32(d + 8, true);
        const flags = dv.getUint16(d + 12, true);
        if (flags & (F_NEXT | F_INDIRECT) || ((flags & F_WRITE) !== 0) !== rx) return done;
        if (addr > memLen || len > memLen - addr) return done;
        if (rx ? len < HDR + frame : len < HDR + 14) return done;
        const e = 5 * k;
        let written = 0;
        if (rx) {
          dv.setUint32(addr, 0, true);
          dv.setUint32(addr + 4, 0, true);
          dv.setUint32(addr + 8, 1 << 16, true); // num_buffers 1
          list[e] = 0; // to guest memory
          list[e + 1] = addr + HDR;
          list[e + 2] = 1; // from our frame
          list[e + 3] = 0;
          list[e + 4] = frame;
          at[k] = addr + HDR + 14;
          written = HDR + frame;
        } else {
          // offloads this device did not offer: the C loop drops such a frame; there are none here
          if (dv.getUint16(addr, true) !== 0) return done;
          list[e] = 1; // to our buffer
          list[e + 1] = 0;
          list[e + 2] = 0; // from guest memory
          list[e + 3] = addr + HDR;
          list[e + 4] = Math.min(len - HDR, own.byteLength);
        }
        const u = used + 4 + 8 * ((s[S_USED] + k) & mask);
        dv.setUint32(u, head, true);
        dv.setUint32(u + 4, written, true);
      }
      if (k === 0) break;
      copyv(list, k, plain, own);
      // (RX: each frame's counter, as the C loop's, after the batch's copies)
      if (rx) for (let j = 0; j < k; j++) dv.setUint32(at[j], ++s[S_SEQ], true);
      s[S_USED] = (s[S_USED] + k) & 0xffff;
      Atomics.store(u16, (used + 2) >> 1, s[S_USED]);
    }
    return done;
  };
}
