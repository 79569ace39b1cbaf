// Backpressure on transmit: a tap whose send buffer is full refuses frames for now (EAGAIN); the
// dataplane leaves them in the guest's ring and waits until the tap's fd is writable, so a guest
// sending faster than the wire drains loses nothing. The wire here: the tap on a bridge whose other port
// is a veth throttled by tc tbf, in a namespace this file creates and deletes; the backend is the CLI's
// vhost-user door inside it (with the tap's send buffer limited: sndbuf=), the guest a test frontend.
// The same through the tap's io_uring (one linked write per frame, a batch per system call) and with
// io_uring turned off (uring=off, and TSVMM_IO_URING=0), which the backend says once and counts.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { NetNs, pkt, lastJson, patternFrame, type Running } from './helpers/netns.js';
import { CliBackend } from './helpers/vhost-user-cli.js';
import { TestFrontend } from './helpers/vhost-user-frontend.js';
import { F_PROTOCOL_FEATURES } from '../src/vhost-user/protocol.js';
import { NET_HDR_LEN } from '../src/virtio-net/net-header.js';

const FEATURES = (1n << 32n) | (1n << BigInt(F_PROTOCOL_FEATURES));
const TX = 1;
const SRC = '02:00:00:00:00:01';
/** the far end's address: frames to it are forwarded to that port alone (a flood or broadcast would
 * be cloned, and a clone no longer holds the tap's send buffer) */
const DST = '02:00:00:00:00:02';
const FRAMES = 200;
const SIZE = 1000;

describe.each([
  // (io_uring asked for outright: a run with TSVMM_IO_URING=0 in its environment still tests it here)
  ['io_uring', '', { TSVMM_IO_URING: '1' }],
  ['uring=off', ',uring=off', {}],
  ['TSVMM_IO_URING=0', '', { TSVMM_IO_URING: '0' }],
])('TX backpressure through a tap (%s)', (mode, option, env: Record<string, string>) => {
  const uring = mode === 'io_uring';
  let ns: NetNs;
  let backend: CliBackend | undefined;
  let fe: TestFrontend | undefined;
  let capture: Running | undefined;

  beforeAll(() => {
    ns = new NetNs(`txbp${option ? 'o' : env.TSVMM_IO_URING === '0' ? 'e' : 'u'}`);
    ns.exec('ip', 'link', 'add', 'br0', 'type', 'bridge');
    ns.addTap('tbp0');
    ns.exec('ip', 'link', 'add', 'vA', 'type', 'veth', 'peer', 'name', 'vB');
    ns.exec('ip', 'link', 'set', 'vB', 'address', DST);
    for (const dev of ['vA', 'vB']) ns.exec('sysctl', '-qw', `net.ipv6.conf.${dev}.disable_ipv6=1`);
    for (const dev of ['tbp0', 'vA']) ns.exec('ip', 'link', 'set', dev, 'master', 'br0');
    for (const dev of ['br0', 'vA', 'vB']) ns.exec('ip', 'link', 'set', dev, 'up');
    // 10 Mbit/s: 200 frames of 1000 bytes take 160 ms; the limit holds them all (the tap's send
    // buffer, not the qdisc, is what must push back)
    ns.exec('tc', 'qdisc', 'add', 'dev', 'vA', 'root', 'tbf', 'rate', '10mbit', 'burst', '10kb', 'limit', '10mb');
  });

  afterAll(async () => {
    fe?.close();
    capture?.proc.kill();
    await backend?.stop();
    ns?.delete();
  });

  it('leaves the frames the tap refuses in the ring and sends them all, in order, once it drains', async () => {
    backend = await CliBackend.start(`tap,ifname=tbp0,sndbuf=16384${option}`, { netns: ns.name, args: ['--stats'], env });
    capture = pkt(ns, ['capture', 'vB', String(FRAMES), '10']);
    await capture.waitFor('READY');
    fe = new TestFrontend(backend.sock);
    await fe.setup(FEATURES, 0n);
    for (let seq = 0; seq < FRAMES; seq++) {
      const at = fe.mem.alloc(NET_HDR_LEN + SIZE);
      fe.mem.bytes(at + NET_HDR_LEN, SIZE).set(patternFrame(seq, SIZE, SRC, DST));
      fe.rings[TX].add([{ addr: at, len: NET_HDR_LEN + SIZE }]);
    }
    fe.kick(TX);
    await fe.usedReaches(TX, FRAMES);
    const seen = lastJson((await capture.done).stdout);
    expect(seen).toMatchObject({ frames: FRAMES, bad: 0, in_order: true, first: 0, last: FRAMES - 1 });
    fe.close();
    fe = undefined;
    expect(await backend.stop()).toBe(143);
    const line = backend.lines.find((l) => l.startsWith('TSVMM-STATS '));
    const { pairs, driver } = JSON.parse(line!.slice('TSVMM-STATS '.length)).vhostUser;
    const tx = pairs[0].tx;
    // the queue ran the way asked for, and the backend said so when io_uring was off
    expect(driver).toMatchObject(uring ? { uringQueues: 1, uringFallbacks: 0 } : { uringQueues: 0, uringFallbacks: 1 });
    const said = backend.lines.filter((l) => l.includes('io_uring'));
    expect(said).toEqual(uring ? [] : [`tsvmm: tap tbp0: io_uring off (${mode}); using readv/writev, a system call per frame`]);
    expect(tx.packets).toBe(FRAMES);
    expect(tx.drops).toBe(0);
    // the tap's 16 KiB hold fewer than ten such frames: the queue waited for it
    expect(tx.waits).toBeGreaterThan(0);
  }, 60_000);
});
