// Extract the uncompressed vmlinux (an ELF with a PVH note) from a bzImage's compressed payload, using
// the boot protocol's payload_offset/payload_length fields and the system's decompressor.
// usage: node scripts/extract-vmlinux.mjs BZIMAGE OUT
import { readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { parseBzImage } from '../dist/boot/bzimage.js';

const [src, out] = process.argv.slice(2);
if (!src || !out) {
  console.error('usage: extract-vmlinux.mjs BZIMAGE OUT');
  process.exit(2);
}
const { payload } = parseBzImage(readFileSync(src));
const magic = Buffer.from(payload.subarray(0, 6)).toString('hex');
const tools = [
  ['28b52ffd', ['zstd', '-dc']],
  ['fd377a585a00', ['xz', '-dc']],
  ['1f8b', ['gzip', '-dc']],
  ['5d0000', ['xz', '-dc', '--format=lzma']],
  ['425a68', ['bzip2', '-dc']],
  ['894c5a4f', ['lzop', '-dc']],
  ['02214c18', ['lz4', '-dc']],
];
const tool = tools.find(([m]) => magic.startsWith(m));
if (!tool) {
  console.error(`extract-vmlinux: unknown payload compression (magic ${magic})`);
  process.exit(1);
}
const [cmd, ...args] = tool[1];
// decompressors may complain about trailing data (the size appended by the kernel build): accept output
const r = spawnSync(cmd, args, { input: payload, maxBuffer: 1 << 30 });
if (!r.stdout || r.stdout.length < 4 || r.stdout.readUInt32BE(0) !== 0x7f454c46) {
  console.error(`extract-vmlinux: ${cmd} did not produce an ELF: ${r.stderr?.toString().trim()}`);
  process.exit(1);
}
writeFileSync(out, r.stdout);
