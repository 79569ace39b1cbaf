#!/usr/bin/env python3
"""Host-side frames for the network tests, on an interface inside the test's namespace (AF_PACKET).

  pkt.py capture IFACE COUNT TIMEOUT_S   print one JSON object: the test-pattern frames seen on IFACE
                                         until COUNT came, TIMEOUT_S passed, or standard input (a pipe)
                                         ended and a second passed without frames (the sender is done:
                                         what it sent is queued by then)
  pkt.py send IFACE COUNT SIZE SRC DST [FIRST [GAP_MS]]  send COUNT test-pattern frames of SIZE bytes
                                         (sequence numbers from FIRST, default 0; GAP_MS apart, default
                                         as fast as the interface takes them), then print JSON
  pkt.py raw IFACE HEX                   send one frame given in hex
  pkt.py tcpcheck IFACE SEGMENTS TIMEOUT PAYLOAD
                                         capture TCP/IPv4 segments to port 5001 (the guest's TSO frames,
                                         segmented by the host), check every checksum and the payload

Pattern (the test guest's): dst src 0x88b5 | "TSVS" | seq u32 | length u32 | byte i = (seq + i) & 0xff
"""
import json, os, select, socket, stat, struct, sys, time, hashlib

ETH_P_ALL = 0x0003
ETHERTYPE = 0x88B5
MAGIC = 0x53565354


def frame(seq, size, src, dst):
    head = dst + src + struct.pack('!H', ETHERTYPE) + struct.pack('<III', MAGIC, seq, size)
    return head + bytes(((seq + i) & 0xFF) for i in range(26, size))


def check(f):
    if len(f) < 26 or struct.unpack('!H', f[12:14])[0] != ETHERTYPE:
        return None
    magic, seq, size = struct.unpack('<III', f[14:26])
    if magic != MAGIC or size != len(f):
        return False
    return seq if f == frame(seq, size, f[6:12], f[0:6]) else False


def mac(s):
    return bytes(int(x, 16) for x in s.split(':'))


def main():
    cmd, iface = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    # keep up with a burst: a large receive buffer, and verification after the capture
    SO_RCVBUFFORCE = 33
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
    if cmd == 'capture':
        count, timeout = int(sys.argv[3]), float(sys.argv[4])
        frames = []
        deadline = time.time() + timeout
        quiet_end = None  # once the sender is done: when a second without frames ends the capture
        # (standard input is watched only as a pipe or socket, as Node makes it: a capture started with
        # /dev/null there runs on)
        mode = os.fstat(sys.stdin.fileno()).st_mode
        watch = [s, sys.stdin] if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else [s]
        print('READY', flush=True)
        while len(frames) < count and time.time() < deadline and (quiet_end is None or time.time() < quiet_end):
            ready = select.select(watch, [], [], 0.5)[0]
            if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
                # the sender is done: what it sent is queued in this socket by now
                watch = [s]
                quiet_end = time.time() + 1
            if s not in ready:
                continue
            f, addr = s.recvfrom(70000)
            if quiet_end is not None:
                quiet_end = time.time() + 1
            if addr[2] == socket.PACKET_OUTGOING or len(f) < 14 or struct.unpack('!H', f[12:14])[0] != ETHERTYPE:
                continue
            frames.append(f)
        good, bad, seqs, digest, sizes, dsts = 0, 0, [], hashlib.sha256(), set(), set()
        for f in frames:
            r = check(f)
            if r is None:
                continue
            if r is False:
                bad += 1
                continue
            good += 1
            seqs.append(r)
            digest.update(f)
            sizes.add(len(f))
            dsts.add(f[0:6].hex(':'))
        print(json.dumps({'frames': good, 'bad': bad, 'in_order': seqs == sorted(seqs), 'first': seqs[0] if seqs else None,
                          'last': seqs[-1] if seqs else None, 'sha256': digest.hexdigest(), 'sizes': sorted(sizes), 'dsts': sorted(dsts)}), flush=True)
    elif cmd == 'send':
        count, size, src, dst = int(sys.argv[3]), int(sys.argv[4]), mac(sys.argv[5]), mac(sys.argv[6])
        first = int(sys.argv[7]) if len(sys.argv) > 7 else 0  # the first frame's sequence number
        gap = float(sys.argv[8]) / 1000 if len(sys.argv) > 8 else 0
        sent = 0
        for seq in range(first, first + count):
            if gap and sent:
                time.sleep(gap)
            while True:
                try:
                    s.send(frame(seq, size, src, dst))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
                except OSError as e:
                    if e.errno == 105:  # ENOBUFS: the queue is full, wait
                        time.sleep(0.001)
                        continue
                    raise
            sent += 1
        print(json.dumps({'sent': sent}), flush=True)
    elif cmd == 'tcpcheck':
        want, timeout, payload = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        s.settimeout(0.5)
        segs = []
        end = time.time() + timeout
        print('READY', flush=True)
        while len(segs) < want and time.time() < end:
            try:
                f, addr = s.recvfrom(70000)
            except socket.timeout:
                continue
            if addr[2] == socket.PACKET_OUTGOING or len(f) < 54 or f[12:14] != b'\x08\x00' or f[23] != 6:
                continue
            if struct.unpack('!H', f[36:38])[0] != 5001:
                continue
            segs.append(f)

        def csum(b):
            if len(b) % 2:
                b += b'\0'
            t = sum(struct.unpack('!%dH' % (len(b) // 2), b))
            while t >> 16:
                t = (t & 0xFFFF) + (t >> 16)
            return t

        bad_ip = bad_tcp = bad_payload = 0
        sizes = []
        for f in segs:
            ip = f[14:34]
            tot = struct.unpack('!H', ip[2:4])[0]
            tcp = f[34:14 + tot]
            if csum(ip) != 0xFFFF:
                bad_ip += 1
            pseudo = ip[12:20] + struct.pack('!BBH', 0, 6, len(tcp))
            if csum(pseudo + tcp) != 0xFFFF:
                bad_tcp += 1
            data = tcp[(tcp[12] >> 4) * 4:]
            sizes.append(len(data))
            off = struct.unpack('!I', tcp[4:8])[0] - 1000
            for j, b in enumerate(data):
                k, i = divmod(off + j, payload)
                if b != (i * 7 + k) & 0xFF:
                    bad_payload += 1
                    break
        print(json.dumps({'segments': len(segs), 'bytes': sum(sizes), 'max_payload': max(sizes) if sizes else 0,
                          'bad_ip_csum': bad_ip, 'bad_tcp_csum': bad_tcp, 'bad_payload': bad_payload}), flush=True)
    elif cmd == 'raw':
        s.send(bytes.fromhex(sys.argv[3]))
        print(json.dumps({'sent': 1}), flush=True)


if __name__ == '__main__':
    main()
