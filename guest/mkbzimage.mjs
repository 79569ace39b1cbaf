// Wrap a flat protected-mode image (linked at 1 MiB, 64-bit entry at +0x200) in a Linux boot protocol
// 2.15 header, so the test guest can be booted as a bzImage.
// usage: node mkbzimage.mjs FLAT.bin INIT_SIZE OUT
import { readFileSync, writeFileSync } from 'node:fs';

const [flatPath, initSizeArg, out] = process.argv.slice(2);
const flat = readFileSync(flatPath);
const setupSects = 1;
const img = Buffer.alloc((setupSects + 1) * 512 + flat.length);
img[0x1f1] = setupSects;
img.writeUInt16LE(0xaa55, 0x1fe);
img[0x200] = 0xeb; // jmp over the header
img[0x201] = 0x66; // header ends at 0x268
img.writeUInt32LE(0x53726448, 0x202); // "HdrS"
img.writeUInt16LE(0x020f, 0x206); // boot protocol 2.15
img[0x211] = 0x01; // LOADED_HIGH
img.writeUInt32LE(0x100000, 0x214); // code32_start
img.writeUInt32LE(0x7fffffff, 0x22c); // initrd_addr_max
img.writeUInt32LE(0x200000, 0x230); // kernel_alignment
img.writeUInt16LE(0x0001, 0x236); // XLF_KERNEL_64
img.writeUInt32LE(4095, 0x238); // cmdline_size
img.writeBigUInt64LE(0x100000n, 0x258); // pref_address
img.writeUInt32LE(Number(initSizeArg), 0x260); // init_size: the image with its bss
flat.copy(img, (setupSects + 1) * 512);
writeFileSync(out, img);
