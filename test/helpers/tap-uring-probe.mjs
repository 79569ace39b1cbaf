// Run inside a namespace holding tap TAP (plain node, on dist/): open the tap driver with its default
// (io_uring where the kernel gives one), send frames of the test pattern through one queue while
// pkt.py captures them on the interface, receive frames pkt.py sends, and print one JSON line: the
// queue's kind, the driver's counters, what the capture saw and what was received (sha256 of each
// direction's frames, in order). test/tap-driver.test.ts runs it with and without io_uring refused.
//   node tap-uring-probe.mjs DIST_DIR PKT TAP
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [dist, PKT, TAP] = process.argv.slice(2);
const load = (p) => import(pathToFileURL(join(dist, p)).href);
const { create, openQueue } = await load('drivers/tap/index.js');
const { newPacketBatch } = await load('drivers/api.js');
const { native } = await load('native.js');

const SRC = '02:00:00:00:00:0a';
const DST = '02:00:00:00:00:0b';
const POLLIN = 1;

/** test/helpers/netns.ts's patternFrame (pkt.py checks the same layout) */
function patternFrame(seq, size) {
  const f = Buffer.alloc(size);
  Buffer.from(DST.replace(/:/g, ''), 'hex').copy(f, 0);
  Buffer.from(SRC.replace(/:/g, ''), 'hex').copy(f, 6);
  f.writeUInt16BE(0x88b5, 12);
  f.writeUInt32LE(0x53565354, 14);
  f.writeUInt32LE(seq, 18);
  f.writeUInt32LE(size, 22);
  for (let i = 26; i < size; i++) f[i] = (seq + i) & 0xff;
  return f;
}

const driver = create({ ifname: TAP });
const q = openQueue(driver.queueInit(0));
const mem = new SharedArrayBuffer(1 << 20);
const u8 = new Uint8Array(mem);

// guest → tap: a batch of frames in two segments each
const sizes = Array.from({ length: 24 }, (_, i) => [60, 1514, 333, 1000][i % 4]);
const tx = newPacketBatch(sizes.length, 2 * sizes.length);
const txDigest = createHash('sha256');
let at = 0;
sizes.forEach((size, i) => {
  const f = patternFrame(i, size);
  txDigest.update(f);
  tx.iovStart[i] = 2 * i;
  for (const [from, to] of [[0, 14], [14, size]]) {
    u8.set(f.subarray(from, to), at);
    tx.iov.set([0, at, to - from], 3 * (tx.iovStart[i] + (from === 0 ? 0 : 1)));
    at += to - from + 5;
  }
  tx.len[i] = size;
});
tx.iovStart[sizes.length] = 2 * sizes.length;
tx.meta.fill(0);
tx.count = sizes.length;
const capture = spawn('python3', [PKT, 'capture', TAP, String(sizes.length), '10'], { stdio: ['ignore', 'pipe', 'inherit'] });
let captured = '';
const closed = new Promise((resolve) => capture.on('close', resolve));
await new Promise((resolve, reject) => {
  capture.stdout.on('data', (d) => {
    captured += d;
    if (captured.includes('READY')) resolve();
  });
  void closed.then(() => reject(new Error(`capture ended: ${captured}`)));
});
const sent = q.transmit(tx, mem);
await closed;
const seen = JSON.parse(captured.trim().split('\n').at(-1));

// tap → guest: frames pkt.py sends, received in batches of 8 packets of two 1024-byte segments
const count = 20;
const size = 700;
const scratch = new Uint8Array(70000);
while (native.read(q.pollFd, scratch) > 0);
execFileSync('python3', [PKT, 'send', TAP, String(count), String(size), SRC, DST]);
native.poll(q.pollFd, POLLIN, 10_000);
const rx = newPacketBatch(8, 16);
for (let k = 0; k < 16; k++) rx.iov.set([0, k * 1024, 1024], 3 * k);
for (let i = 0; i <= 8; i++) rx.iovStart[i] = 2 * i;
const rxDigest = createHash('sha256');
const expected = createHash('sha256');
let received = 0;
for (let tries = 0; received < count && tries < 1000; tries++) {
  rx.count = 8;
  const n = q.receive(rx, mem);
  if (n === 0) native.poll(q.pollFd, POLLIN, 100);
  for (let i = 0; i < n; i++) {
    rxDigest.update(new Uint8Array(mem, 2048 * i, rx.len[i]));
    expected.update(patternFrame(received++, size));
  }
}

console.log(JSON.stringify({
  queue: q.constructor.name,
  counters: driver.counters(),
  tx: { offered: sizes.length, sent, drops: q.drops, sha256: txDigest.digest('hex'), seen },
  rx: { frames: received, sha256: rxDigest.digest('hex'), expected: expected.digest('hex') },
}));
q.close();
driver.close();
