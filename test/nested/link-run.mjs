// The link and shutdown scenarios' VMM: tsvmm as a library (the CLI cannot be told to change a running
// VM's link or press its power button): the L2 VM with one tap device, its serial console on stdout; the
// link taken down when L2 says it is ready, up again once L2 saw it go; the power button pressed
// (vm.shutdown) when L2 says it waits for it. Prints how the VM ended as `tsvmm run` does; exits with its code.
// usage: TSVMM_DIR=/path/to/project node link-run.mjs KERNEL INITRD CMDLINE TIMEOUT_S
import { pathToFileURL } from 'node:url';

const dist = pathToFileURL(`${process.env.TSVMM_DIR ?? '/tsvmm'}/dist/`).href;
const { Vm } = await import(new URL('index.js', dist).href);
const [kernel, initrd, cmdline, timeout] = process.argv.slice(2);
const vm = new Vm({ kernel, initrd, cmdline, memory: '512M', cpus: 1, net: [{ driver: 'tap', options: { ifname: 'tap0' } }] });
let pending = '';
/** vm.shutdown() once the power button was pressed: what it resolved with is printed before the exit */
let shutdown;
vm.serial.on('data', (d) => {
  process.stdout.write(d);
  pending += d.toString('latin1');
  for (let i; (i = pending.indexOf('\n')) >= 0; pending = pending.slice(i + 1)) {
    const line = pending.slice(0, i);
    if (line.includes('L2-LINK-READY')) {
      vm.net[0].setLink(false);
      process.stdout.write(`L1-LINK down (linkUp=${vm.net[0].linkUp})\n`);
    } else if (line.includes('L2-LINK-DOWN-SEEN')) {
      vm.net[0].setLink(true);
      process.stdout.write(`L1-LINK up (linkUp=${vm.net[0].linkUp})\n`);
    } else if (line.includes('L2-SHUTDOWN-READY')) {
      process.stdout.write('L1-SHUTDOWN power button pressed\n');
      shutdown = vm.shutdown({ deadlineMs: 60_000 }).then((e) => process.stdout.write(`L1-SHUTDOWN-END ${e.reason} (${e.detail})\n`));
    }
  }
});
await vm.start();
let timedOut = false;
const timer = setTimeout(() => {
  timedOut = true;
  void vm.stop();
}, Number(timeout) * 1000);
const exit = await vm.exited;
await shutdown;
clearTimeout(timer);
const how = exit.reason === 'poweroff' ? `guest powered off (status ${exit.status})` : `${exit.reason} (${exit.detail})`;
process.stderr.write(`tsvmm: ${timedOut ? 'time limit reached; ' : ''}${how}\n`);
process.exit(timedOut ? 124 : exit.reason === 'poweroff' ? exit.status & 0xff : 1);
