import { describe, expect, it } from 'vitest';
import { segmentsAfter } from '../src/virtio-net/segments.js';

/** segmentsAfter over pieces (offset, length), from segment `at` of a fresh iov; the triples written and the end. */
function lay(pieces: [number, number][], skip: number, at = 0): { segs: number[][]; end: number } {
  const offsets = new Float64Array(pieces.map((p) => p[0]));
  const lens = new Uint32Array(pieces.map((p) => p[1]));
  const iov = new Float64Array(3 * (at + pieces.length)).fill(-1);
  const end = segmentsAfter(offsets, lens, 0, pieces.length, skip, iov, at);
  const segs = [];
  for (let s = at; s < end; s++) segs.push([...iov.subarray(3 * s, 3 * s + 3)]);
  // nothing before `at` or after the end is written
  expect([...iov.subarray(0, 3 * at), ...iov.subarray(3 * end)].every((x) => x === -1)).toBe(true);
  return { segs, end };
}

describe('segmentsAfter: a chain after its header, as driver segments', () => {
  it('leaves out a header inside the first buffer', () => {
    expect(lay([[0x1000, 12 + 60]], 12)).toEqual({ segs: [[0, 0x100c, 60]], end: 1 });
  });

  it('leaves out a header spread over buffers, and a buffer the header fills exactly', () => {
    expect(lay([[0x1000, 4], [0x2000, 8], [0x3000, 10], [0x4000, 20]], 12, 2)).toEqual({ segs: [[0, 0x3000, 10], [0, 0x4000, 20]], end: 4 });
    expect(lay([[0x1000, 5], [0x2000, 30]], 12)).toEqual({ segs: [[0, 0x2007, 23]], end: 1 });
  });

  it('leaves out empty buffers before, inside and after the header', () => {
    expect(lay([[0x1000, 0], [0x2000, 6], [0x3000, 0], [0x4000, 10], [0x5000, 0], [0x6000, 7]], 12)).toEqual({ segs: [[0, 0x4006, 4], [0, 0x6000, 7]], end: 2 });
  });

  it('writes nothing for a chain that is all header', () => {
    expect(lay([[0x1000, 12]], 12, 1)).toEqual({ segs: [], end: 1 });
  });
});
