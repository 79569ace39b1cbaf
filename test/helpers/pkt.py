#!/usr/bin/env python3
"""Host-side frames for the network tests, on an interface inside the test's namespace (AF_PACKET).

  pkt.py capture IFACE COUNT TIMEOUT_S   print one JSON object: the test-pattern frames seen on IFACE
  pkt.py send IFACE COUNT SIZE SRC DST   send COUNT test-pattern frames of SIZE bytes, then print JSON
  pkt.py raw IFACE HEX                   send one frame given in hex

Pattern (the test guest's): dst src 0x88b5 | "TSVS" | seq u32 | length u32 | byte i = (seq + i) & 0xff
"""
import json, socket, struct, sys, time, hashlib

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
        s.settimeout(0.5)
        frames = []
        end = time.time() + timeout
        print('READY', flush=True)
        while len(frames) < count and time.time() < end:
            try:
                f, addr = s.recvfrom(70000)
            except socket.timeout:
                continue
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
        sent = 0
        for seq in range(count):
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
    elif cmd == 'raw':
        s.send(bytes.fromhex(sys.argv[3]))
        print(json.dumps({'sent': 1}), flush=True)


if __name__ == '__main__':
    main()
