// Create a persistent multi-queue tap with a vnet header (busybox's ip cannot), for the nested tests.
// usage: TSVMM_DIR=/path/to/project node mktap.mjs NAME
import { pathToFileURL } from 'node:url';

const dist = pathToFileURL(`${process.env.TSVMM_DIR ?? '/tsvmm'}/dist/`).href;
const { native, O_RDWR } = await import(new URL('native.js', dist).href);
const T = await import(new URL('drivers/tap/tun.js', dist).href);

const name = process.argv[2];
const fd = native.open('/dev/net/tun', O_RDWR);
const ifr = new Uint8Array(T.SIZEOF_IFREQ);
ifr.set(new TextEncoder().encode(name));
new DataView(ifr.buffer).setUint16(T.IFNAMSIZ, T.IFF_TAP | T.IFF_NO_PI | T.IFF_VNET_HDR | T.IFF_MULTI_QUEUE, true);
native.ioctl(fd, T.TUNSETIFF, ifr, 'TUNSETIFF');
native.ioctl(fd, T.TUNSETPERSIST, 1, 'TUNSETPERSIST');
native.close(fd);
