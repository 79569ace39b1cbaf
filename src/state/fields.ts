// Reading a decoded state document, which is untrusted input like a guest's: every field is checked
// for presence, type and range, and an object with a field nobody asked for is refused too. A
// violation throws StateError naming where it is (`devices.pio:com1.ier: ...`); restore turns it into
// one line for the user.

export class StateError extends Error {
  override name = 'StateError';
}

/** One object of the document, at `path`, whose fields are read once each and checked. */
export class Fields {
  private readonly seen = new Set<string>();
  private readonly o: Record<string, unknown>;

  constructor(
    v: unknown,
    readonly path: string,
  ) {
    if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) throw new StateError(`${path}: not a map`);
    this.o = v as Record<string, unknown>;
  }

  private at(key: string): string {
    return this.path ? `${this.path}.${key}` : key;
  }

  /** The raw value of `key` (it must be there). */
  any(key: string): unknown {
    if (!Object.prototype.hasOwnProperty.call(this.o, key)) throw new StateError(`${this.at(key)}: missing`);
    this.seen.add(key);
    return this.o[key];
  }

  /** An integer in [0, max]. */
  uint(key: string, max: number): number {
    return checkUint(this.any(key), this.at(key), max);
  }

  bool(key: string): boolean {
    const v = this.any(key);
    if (typeof v !== 'boolean') throw new StateError(`${this.at(key)}: not a boolean`);
    return v;
  }

  str(key: string, max = 256): string {
    const v = this.any(key);
    if (typeof v !== 'string' || v.length > max) throw new StateError(`${this.at(key)}: not a string of at most ${max} characters`);
    return v;
  }

  /** Bytes of exactly `len` (a number) or of a length in [min, max]. */
  bytes(key: string, len: number | { min: number; max: number; multiple?: number }): Uint8Array {
    return checkBytes(this.any(key), this.at(key), len);
  }

  /** A 64-bit value, kept in the document as 8 little-endian bytes (msgpack has no unsigned 64-bit number every reader keeps). */
  u64(key: string): bigint {
    const b = this.bytes(key, 8);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  /** An array of at most `max` elements, each read by `each`. */
  list<T>(key: string, max: number, each: (v: unknown, path: string) => T): T[] {
    const v = this.any(key);
    if (!Array.isArray(v) || v.length > max) throw new StateError(`${this.at(key)}: not a list of at most ${max} entries`);
    return v.map((x, i) => each(x, `${this.at(key)}[${i}]`));
  }

  /** A nested object. */
  obj(key: string): Fields {
    return new Fields(this.any(key), this.at(key));
  }

  /** A nested value that may be nil. */
  optional<T>(key: string, read: (f: Fields) => T): T | undefined {
    const v = this.any(key);
    return v === null || v === undefined ? undefined : read(new Fields(v, this.at(key)));
  }

  /** Every field was read: anything else in the object is refused. Call last. */
  done(): void {
    for (const k of Object.keys(this.o)) if (!this.seen.has(k)) throw new StateError(`${this.at(k)}: unexpected field`);
  }
}

export function checkUint(v: unknown, path: string, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw new StateError(`${path}: not an integer in [0, ${max}]`);
  return v;
}

export function checkBytes(v: unknown, path: string, len: number | { min: number; max: number; multiple?: number }): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new StateError(`${path}: not bytes`);
  const ok = typeof len === 'number' ? v.length === len : v.length >= len.min && v.length <= len.max && v.length % (len.multiple ?? 1) === 0;
  if (!ok) throw new StateError(`${path}: ${v.length} bytes, expected ${typeof len === 'number' ? len : `${len.min}..${len.max}${len.multiple ? ` in multiples of ${len.multiple}` : ''}`}`);
  return v;
}

/** 8 little-endian bytes for a 64-bit value (Fields.u64 reads them back). */
export function u64Bytes(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
  return b;
}

/** A value a device saves: msgpack-encodable (maps, lists, numbers, booleans, strings, bytes, nil). */
export type StateValue = number | boolean | string | Uint8Array | null | StateValue[] | { [key: string]: StateValue };

/** A device (or part of one) whose state saves into, and restores from, the document. */
export interface Stateful {
  /** Its state now. The device must be quiescent (no vCPU in it, its queues' threads stopped). */
  saveState(): StateValue;
  /** Take `state` (checked field by field: StateError on anything wrong) into this freshly built device. */
  restoreState(state: Fields): void;
}
