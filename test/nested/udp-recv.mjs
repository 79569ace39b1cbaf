// L1's receiver for the nested netctl scenario's UDP segmentation check (L2 sends with
// udpgso-send.c): takes datagrams on PORT until EXPECTED distinct records came, 10 s passed without
// one after the first, TIMEOUT_S passed, or it is told to stop (SIGTERM); checks each (1000 bytes: a
// u32 sequence number, then byte i = (seq + i) & 0xff), and counts the frames tap0 received from the
// guest meanwhile (a GSO packet passed whole is one frame there).
// Writes one line to OUT: "records=N distinct=D bad=B tap-frames=F", and prints it.
// Usage: node udp-recv.mjs PORT EXPECTED TIMEOUT_S OUT
import dgram from 'node:dgram';
import { readFileSync, writeFileSync } from 'node:fs';

const [port, expected, timeoutS, out] = process.argv.slice(2);
const tapRx = () => Number(readFileSync('/sys/class/net/tap0/statistics/rx_packets', 'utf8'));
const seen = new Set();
let records = 0;
let bad = 0;
let firstTap = -1;
let idle;
const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 8 << 20 });
const finish = () => {
  const line = `records=${records} distinct=${seen.size} bad=${bad} tap-frames=${firstTap < 0 ? 0 : tapRx() - firstTap + 1}`;
  writeFileSync(out, line + '\n');
  console.log(`L1-UDP-RECV ${line}`);
  s.close();
  process.exit(0);
};
s.on('message', (m) => {
  if (firstTap < 0) firstTap = tapRx();
  clearTimeout(idle);
  idle = setTimeout(finish, 10_000);
  records++;
  let ok = m.length === 1000;
  const seq = ok ? m.readUInt32LE(0) : -1;
  for (let i = 4; ok && i < 1000; i++) ok = m[i] === ((seq + i) & 0xff);
  if (ok) seen.add(seq);
  else bad++;
  if (seen.size >= Number(expected)) finish();
});
s.bind(Number(port), () => console.log('L1-UDP-RECV-READY'));
setTimeout(finish, Number(timeoutS) * 1000);
process.on('SIGTERM', finish);
