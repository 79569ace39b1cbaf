// Create a persistent multi-queue tap with a vnet header (busybox's ip cannot), for the L1 init script.
// usage: node mktap.mjs NAME
import { native, O_RDWR } from './dist/native.js';
import { TUNSETIFF, TUNSETPERSIST, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFNAMSIZ, SIZEOF_IFREQ } from './dist/drivers/tap/tun.js';

const name = process.argv[2];
const fd = native.open('/dev/net/tun', O_RDWR);
const ifr = new Uint8Array(SIZEOF_IFREQ);
ifr.set(new TextEncoder().encode(name));
new DataView(ifr.buffer).setUint16(IFNAMSIZ, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE, true);
native.ioctl(fd, TUNSETIFF, ifr, 'TUNSETIFF');
native.ioctl(fd, TUNSETPERSIST, 1, 'TUNSETPERSIST');
native.close(fd);
