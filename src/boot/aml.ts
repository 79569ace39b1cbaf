// A small ACPI Machine Language encoder: the handful of constructs tsvmm's DSDT needs (names, scopes,
// devices, integers, EISA ids, buffers, resource templates). ACPI 6.x §20 (AML) and §6.4 (resources).

type Bytes = number[];

/** PkgLength (§20.2.4): the length of what follows, counting the PkgLength bytes themselves. */
export function pkgLength(bodyLen: number): Bytes {
  for (let n = 1; n <= 4; n++) {
    const total = bodyLen + n;
    if (n === 1 && total < 0x40) return [total];
    if (n > 1 && total < 1 << (4 + 8 * (n - 1))) {
      const out = [((n - 1) << 6) | (total & 0x0f)];
      for (let i = 1; i < n; i++) out.push((total >> (4 + 8 * (i - 1))) & 0xff);
      return out;
    }
  }
  throw new Error('AML package too long');
}

/** A 4-character name segment, padded with '_' (or a root/prefixed path like "\\_SB_"). */
export function nameString(name: string): Bytes {
  const out: Bytes = [];
  let s = name;
  while (s.startsWith('\\') || s.startsWith('^')) {
    out.push(s.charCodeAt(0));
    s = s.slice(1);
  }
  const segs = s.split('.');
  if (segs.length === 2) out.push(0x2e); // DualNamePrefix
  else if (segs.length > 2) out.push(0x2f, segs.length); // MultiNamePrefix
  for (const seg of segs) {
    if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new Error(`bad AML name segment "${seg}"`);
    for (const c of seg.padEnd(4, '_')) out.push(c.charCodeAt(0));
  }
  return out;
}

export function integer(v: number): Bytes {
  if (v === 0) return [0x00];
  if (v === 1) return [0x01];
  if (v < 0x100) return [0x0a, v];
  if (v < 0x10000) return [0x0b, v & 0xff, v >> 8];
  if (v < 2 ** 32) return [0x0c, ...u32(v)];
  const lo = v % 2 ** 32;
  const hi = Math.floor(v / 2 ** 32);
  return [0x0e, ...u32(lo), ...u32(hi)];
}

function u16(v: number): Bytes {
  return [v & 0xff, (v >> 8) & 0xff];
}

function u32(v: number): Bytes {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

/** EisaId("PNP0A03") as the compressed 32-bit id. */
export function eisaId(id: string): Bytes {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new Error(`bad EISA id ${id}`);
  const c = (i: number) => id.charCodeAt(i) - 0x40;
  const hi = (c(0) << 10) | (c(1) << 5) | c(2);
  const prod = parseInt(id.slice(3), 16);
  const v = ((hi >> 8) & 0xff) | ((hi & 0xff) << 8) | (((prod >> 8) & 0xff) << 16) | ((prod & 0xff) << 24);
  return [0x0c, ...u32(v >>> 0)];
}

export function name(n: string, value: Bytes): Bytes {
  return [0x08, ...nameString(n), ...value];
}

export function scope(n: string, body: Bytes): Bytes {
  const inner = [...nameString(n), ...body];
  return [0x10, ...pkgLength(inner.length), ...inner];
}

export function device(n: string, body: Bytes): Bytes {
  const inner = [...nameString(n), ...body];
  return [0x5b, 0x82, ...pkgLength(inner.length), ...inner];
}

export function buffer(bytes: Bytes): Bytes {
  const inner = [...integer(bytes.length), ...bytes];
  return [0x11, ...pkgLength(inner.length), ...inner];
}

export function pkg(elements: Bytes[]): Bytes {
  const inner = [elements.length, ...elements.flat()];
  return [0x12, ...pkgLength(inner.length), ...inner];
}

// ---- resource descriptors (§6.4)

/** Word address space descriptor: a bus number or I/O range the bridge produces. */
export function wordRange(kind: 'bus' | 'io', min: number, max: number): Bytes {
  const type = kind === 'bus' ? 2 : 1;
  const typeFlags = kind === 'io' ? 0x03 : 0x00; // I/O: entire range
  // general flags: producer, positive decode, min and max fixed
  return [0x88, ...u16(13), type, 0x0c, typeFlags, ...u16(0), ...u16(min), ...u16(max), ...u16(0), ...u16(max - min + 1)];
}

/** DWord memory range, non-cacheable, read/write. */
export function dwordMemory(min: number, max: number): Bytes {
  return [0x87, ...u16(23), 0, 0x0c, 0x01, ...u32(0), ...u32(min), ...u32(max), ...u32(0), ...u32(max - min + 1)];
}

/** QWord memory range (above 4 GiB), non-cacheable, read/write. */
export function qwordMemory(min: number, max: number): Bytes {
  const u64 = (v: number) => [...u32(v % 2 ** 32), ...u32(Math.floor(v / 2 ** 32))];
  return [0x8a, ...u16(43), 0, 0x0c, 0x01, ...u64(0), ...u64(min), ...u64(max), ...u64(0), ...u64(max - min + 1)];
}

/** Fixed I/O port descriptor (16-bit decode). */
export function ioPort(min: number, max: number, align: number, len: number): Bytes {
  return [0x47, 0x01, ...u16(min), ...u16(max), align, len];
}

/** IRQNoFlags(): one ISA interrupt (edge, active high). */
export function irq(n: number): Bytes {
  const mask = 1 << n;
  return [0x22, mask & 0xff, (mask >> 8) & 0xff];
}

/** ResourceTemplate(): the descriptors, an end tag, as a buffer. */
export function resourceTemplate(descriptors: Bytes[]): Bytes {
  return buffer([...descriptors.flat(), 0x79, 0x00]);
}

// ---- the constructs of the Generic Event Device's event method

/** A String object (§20.2.3): ASCII, NUL-terminated (a _HID that is no EISA id, as "ACPI0013"). */
export function string(s: string): Bytes {
  if (!/^[\x01-\x7f]*$/.test(s)) throw new Error(`bad AML string ${JSON.stringify(s)}`);
  return [0x0d, ...[...s].map((c) => c.charCodeAt(0)), 0x00];
}

/** Method(name, argCount, Serialized | NotSerialized) { body }. */
export function method(n: string, args: number, serialized: boolean, body: Bytes): Bytes {
  if (!Number.isInteger(args) || args < 0 || args > 7) throw new Error(`bad AML method argument count ${args}`);
  const inner = [...nameString(n), args | (serialized ? 0x08 : 0), ...body];
  return [0x14, ...pkgLength(inner.length), ...inner];
}

/** OperationRegion(name, SystemIO, port, length). */
export function ioRegion(n: string, port: number, len: number): Bytes {
  return [0x5b, 0x80, ...nameString(n), 0x01, ...integer(port), ...integer(len)];
}

/** Field(region, ByteAcc, NoLock, Preserve) { name, bits; ... }: fields named in order from offset 0. */
export function byteField(region: string, fields: Array<[string, number]>): Bytes {
  const list: Bytes = [];
  for (const [n, bits] of fields) {
    // a field's length is a PkgLength-encoded bit count (not counting its own bytes): one byte below 64
    if (!Number.isInteger(bits) || bits < 1 || bits >= 0x40) throw new Error(`bad AML field width ${bits}`);
    list.push(...nameString(n), bits);
  }
  const inner = [...nameString(region), 0x01, ...list];
  return [0x5b, 0x81, ...pkgLength(inner.length), ...inner];
}

/** Local0 (§20.2.6.2), as an operand or a target. */
export const LOCAL0: Bytes = [0x60];

/** Store(source, target). */
export function store(source: Bytes, target: Bytes): Bytes {
  return [0x70, ...source, ...target];
}

/** And(a, b) with no target: the value, for a predicate. */
export function and(a: Bytes, b: Bytes): Bytes {
  return [0x7b, ...a, ...b, 0x00];
}

/** If(predicate) { body } (no Else). */
export function ifThen(predicate: Bytes, body: Bytes): Bytes {
  const inner = [...predicate, ...body];
  return [0xa0, ...pkgLength(inner.length), ...inner];
}

/** Notify(object, value). */
export function notify(object: string, value: number): Bytes {
  return [0x86, ...nameString(object), ...integer(value)];
}

/** A reference to a named object (a field, a device), as an operand. */
export function ref(n: string): Bytes {
  return nameString(n);
}

/** Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive) { gsi }: the extended interrupt descriptor. */
export function edgeInterrupt(gsi: number): Bytes {
  return interrupt(gsi, { level: false, shared: false });
}

/**
 * Interrupt(ResourceConsumer, Edge | Level, ActiveHigh, Exclusive | Shared) { gsi } (§6.4.3.6): flags
 * bit 0 consumer, bit 1 edge-triggered, bit 2 active low, bit 3 shared; one interrupt number.
 */
export function interrupt(gsi: number, o: { level: boolean; shared: boolean }): Bytes {
  if (!Number.isInteger(gsi) || gsi < 0 || gsi >= 2 ** 32) throw new Error(`bad interrupt number ${gsi}`);
  const flags = 0x01 | (o.level ? 0 : 0x02) | (o.shared ? 0x08 : 0);
  return [0x89, ...u16(6), flags, 1, ...u32(gsi)];
}
