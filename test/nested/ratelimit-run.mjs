// The ratelimit scenario's VMM: tsvmm as a library (the CLI cannot be told to change a running VM's
// limits): the L2 VM with one device from a --net argument (parsed as `tsvmm run` parses it, rate limits
// included), its serial console on stdout, and its bandwidth limits halved (vm.net[0].setRateLimit)
// when L2 asks; $DATA_DIR/limit-changed is published once they are. Prints how the VM ended and its
// counters as `tsvmm run --stats` does; exits with its code.
// usage: TSVMM_DIR=/path/to/project DATA_DIR=/data node ratelimit-run.mjs KERNEL INITRD CMDLINE TIMEOUT_S NET
import { writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const dist = pathToFileURL(`${process.env.TSVMM_DIR ?? '/tsvmm'}/dist/`).href;
const { Vm } = await import(new URL('index.js', dist).href);
const { parseNetArg } = await import(new URL('vmm/config.js', dist).href);
const [kernel, initrd, cmdline, timeout, netArg] = process.argv.slice(2);
const vm = new Vm({ kernel, initrd, cmdline, memory: '512M', cpus: 1, net: [parseNetArg(netArg)] });
/** the same limits with half the bandwidth */
const halved = (l) => Object.fromEntries(Object.entries(l).map(([dir, d]) => [dir, d.bandwidth ? { ...d, bandwidth: { ...d.bandwidth, size: Math.max(1, Math.floor(d.bandwidth.size / 2)) } } : d]));
let pending = '';
vm.serial.on('data', (d) => {
  process.stdout.write(d);
  pending += d.toString('latin1');
  for (let i; (i = pending.indexOf('\n')) >= 0; pending = pending.slice(i + 1)) {
    if (!pending.slice(0, i).includes('L2-RATELIMIT-CHANGE')) continue;
    vm.net[0].setRateLimit(halved(vm.net[0].rateLimit));
    writeFileSync(`${process.env.DATA_DIR ?? '/data'}/limit-changed`, '');
    process.stdout.write(`L1-RATELIMIT ${JSON.stringify(vm.net[0].rateLimit)}\n`);
  }
});
await vm.start();
// (held here: the VM lets go of its devices when it ends, their counters stay readable)
const net = vm.net[0];
let timedOut = false;
const timer = setTimeout(() => {
  timedOut = true;
  void vm.stop();
}, Number(timeout) * 1000);
const exit = await vm.exited;
clearTimeout(timer);
process.stderr.write(`TSVMM-STATS ${JSON.stringify({ net: [{ pairs: [net.queueStats(0)] }] })}\n`);
const how = exit.reason === 'poweroff' ? `guest powered off (status ${exit.status})` : `${exit.reason} (${exit.detail})`;
process.stderr.write(`tsvmm: ${timedOut ? 'time limit reached; ' : ''}${how}\n`);
process.exit(timedOut ? 124 : exit.reason === 'poweroff' ? exit.status & 0xff : 1);
