// The Toeplitz hash of RSS (Microsoft's "RSS hashing functions"; virtio 1.x §5.1.6.4.3): each set bit
// of the input, counted from the most significant bit of its first byte, XORs in the 32 bits of the key
// that start at that bit's position. Pure functions over plain arrays; the per-key table makes a hash
// cost one lookup per input byte.

/** the longest hash input: an IPv6 4-tuple (two 16-byte addresses, two ports) */
export const MAX_HASH_INPUT = 36;
/** a key long enough for MAX_HASH_INPUT bytes of input (MAX_HASH_INPUT + 4: the spec's 40) */
export const RSS_KEY_SIZE = 40;

/**
 * The lookup table of `key` (RSS_KEY_SIZE bytes read; shorter keys read as zero-padded): entry
 * 256 * i + b is what input byte i of value b XORs into the hash.
 */
export function toeplitzTable(key: Uint8Array, out = new Uint32Array(MAX_HASH_INPUT * 256)): Uint32Array {
  const k = (i: number) => (i < key.length ? key[i] : 0);
  for (let i = 0; i < MAX_HASH_INPUT; i++) {
    // the 40 key bits from byte i: each of the byte's 8 input bits takes the 32 that start at it
    const hi = ((k(i) << 24) | (k(i + 1) << 16) | (k(i + 2) << 8) | k(i + 3)) >>> 0;
    const lo = k(i + 4);
    const bitWord = new Uint32Array(8);
    for (let bit = 0; bit < 8; bit++) bitWord[bit] = bit === 0 ? hi : ((hi << bit) | (lo >>> (8 - bit))) >>> 0;
    for (let b = 0; b < 256; b++) {
      let h = 0;
      for (let bit = 0; bit < 8; bit++) if (b & (0x80 >> bit)) h ^= bitWord[bit];
      out[256 * i + b] = h >>> 0;
    }
  }
  return out;
}

/** The hash of input[0..len) (len ≤ MAX_HASH_INPUT) through a toeplitzTable. */
export function toeplitzHash(table: Uint32Array, input: Uint8Array, len: number): number {
  let h = 0;
  for (let i = 0; i < len; i++) h ^= table[256 * i + input[i]];
  return h >>> 0;
}
