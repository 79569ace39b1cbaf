// Minimal ELF reader for kernels: loadable segments and notes. Validates offsets against the file.

export interface ElfSegment {
  type: number;
  offset: number;
  paddr: number;
  filesz: number;
  memsz: number;
}

export interface ElfNote {
  name: string;
  type: number;
  desc: Uint8Array;
}

export interface ElfImage {
  entry: number;
  segments: ElfSegment[];
  notes: ElfNote[];
}

export const PT_LOAD = 1;
export const PT_NOTE = 4;

export function isElf(b: Uint8Array): boolean {
  return b.length >= 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

export function parseElf(b: Uint8Array): ElfImage {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (!isElf(b)) throw new Error('not an ELF file');
  const is64 = b[4] === 2;
  if (b[5] !== 1) throw new Error('ELF is not little-endian');
  const u = (o: number, w: 4 | 8) => {
    if (o + w > b.length) throw new Error('ELF truncated');
    return w === 8 ? Number(v.getBigUint64(o, true)) : v.getUint32(o, true);
  };
  const W = is64 ? 8 : 4;
  const entry = u(24, W);
  const phoff = u(is64 ? 32 : 28, W);
  const phentsize = v.getUint16(is64 ? 54 : 42, true);
  const phnum = v.getUint16(is64 ? 56 : 44, true);
  const segments: ElfSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    const seg = is64
      ? { type: u(o, 4), offset: u(o + 8, 8), paddr: u(o + 24, 8), filesz: u(o + 32, 8), memsz: u(o + 40, 8) }
      : { type: u(o, 4), offset: u(o + 4, 4), paddr: u(o + 12, 4), filesz: u(o + 16, 4), memsz: u(o + 20, 4) };
    if (seg.offset + seg.filesz > b.length || seg.filesz > seg.memsz) throw new Error('ELF segment outside the file');
    segments.push(seg);
  }
  const notes: ElfNote[] = [];
  for (const s of segments.filter((s) => s.type === PT_NOTE)) {
    let o = s.offset;
    const end = s.offset + s.filesz;
    while (o + 12 <= end) {
      const namesz = v.getUint32(o, true);
      const descsz = v.getUint32(o + 4, true);
      const type = v.getUint32(o + 8, true);
      const nameOff = o + 12;
      const descOff = nameOff + ((namesz + 3) & ~3);
      const next = descOff + ((descsz + 3) & ~3);
      if (next > end) break;
      const name = new TextDecoder().decode(b.subarray(nameOff, nameOff + Math.max(0, namesz - 1)));
      notes.push({ name, type, desc: b.subarray(descOff, descOff + descsz) });
      o = next;
    }
  }
  return { entry, segments, notes };
}
