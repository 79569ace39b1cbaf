// The tsvmm launcher. Bad input gets one line naming what to fix and a non-zero exit, never a stack trace.
import { createWriteStream, readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { Vm, type VmExit, type NetDevice, type MigrationState } from './vmm/vm.js';
import { UserError } from './errors.js';
import { parseNetArg, parseRngArg, type RngConfig } from './vmm/config.js';
import { formatMac } from './virtio-net/device.js';
import { createDriver } from './drivers/registry.js';
import { VhostUserBackend } from './vhost-user/backend.js';
import { VhostUserServer } from './vhost-user/server.js';
import type { NetDriver } from './drivers/api.js';
import { isNativeError } from './native.js';
import { ApiServer } from './api/server.js';
import { vmTarget, backendTarget } from './api/targets.js';
import { ctl } from './api/ctl.js';
import { top } from './api/top.js';
import { parseMigrationUrl } from './vmm/migration/url.js';
import { describeMigration } from './vmm/migration/status.js';
import { MigrationError } from './vmm/migration/wire.js';

const USAGE = `usage: tsvmm run --kernel FILE [--initrd FILE] [--cmdline STR] [--mem SIZE] [--cpus N]
                 [--serial stdio|file:PATH|none] [--kvm-device PATH]
                 [--net DRIVER,key=value,...]... [--viommu] [--rng[=packed=off]] [--api-socket PATH]
       tsvmm run --restore DIR [--net DRIVER,key=value,...]... [--serial ...] [--api-socket PATH]
       tsvmm run --incoming unix:PATH|tcp:HOST:PORT [--mem SIZE] [--cpus N] [--net ...]... [--viommu]
                 [--rng[=OPTS]] [--serial ...] [--api-socket PATH]
       tsvmm vhost-user --socket PATH [--client] --net DRIVER,key=value,... [--timeout SECS] [--stats]
                 [--api-socket PATH]
       tsvmm ctl --api-socket PATH get vm|metrics | pause | resume | shutdown | net ID link up|down | ...
       tsvmm top --api-socket PATH [--interval SECS]
       tsvmm --help | --version

run boots a bzImage or a PVH ELF kernel on KVM. vhost-user serves tsvmm's dataplane and a driver to a
vhost-user frontend (QEMU, DPDK's virtio-user) on a unix socket.
  --kernel FILE    bzImage, or an ELF vmlinux with a PVH entry note
  --restore DIR    start from a snapshot (tsvmm ctl snapshot DIR) instead of a kernel: its machine
                   again (--mem, --cpus, --viommu, --rng, if given, must be the snapshot's), its memory
                   mapped copy-on-write from DIR, the guest going on where it was; each --net given
                   replaces the saved device's driver (another tap, say), its device settings kept
  --incoming URL   take a running guest from another tsvmm (tsvmm ctl migrate URL there) instead of
                   booting one: listen on unix:PATH or tcp:HOST:PORT for one migration; --mem, --cpus,
                   --net, --viommu and --rng must make the source's machine (another tap may serve a
                   --net), or the migration is refused and the source runs on
  --initrd FILE    initial ramdisk
  --cmdline STR    kernel command line
  --mem SIZE       guest memory, e.g. 512M or 2G (default 512M)
  --cpus N         number of vCPUs (default 1)
  --serial WHERE   serial console: stdio (default), file:PATH, or none
  --kvm-device P   KVM device node (default /dev/kvm)
  --timeout SECS   stop the VM after SECS seconds (exit status 124), whatever the guest is doing
  --stats          when the VM ends, print per-queue network (and rng) counters as a JSON line (stderr)
  --net SPEC       a virtio-net device (repeatable), e.g. tap,ifname=tap0[,queues=N][,mac=MAC]
                   [,threads=N][,busy-poll=USEC][,packed=off]; DRIVER is tap, af-xdp, null or the
                   path of a driver module; packed=off offers split rings only
  --viommu         a virtio-iommu translating the network devices' DMA (VIRTIO_F_ACCESS_PLATFORM)
  --rng[=OPTS]     a virtio-rng device: entropy for the guest (/dev/hwrng) from the host's CSPRNG;
                   --rng=packed=off offers split rings only
  --api-socket P   serve the control API (HTTP and JSON: docs/API.md) on the unix socket P (mode 0600),
                   for tsvmm ctl or curl --unix-socket P

Exit status: the guest's power-off status (0 for a clean power-off or reset), 1 if the VM crashed
(or an incoming migration failed), 2 for bad usage, 3 when the VM migrated to another tsvmm (which
runs it now), 124 when --timeout stopped it, 130/143 when interrupted.`;

/** the exit status of a VM that migrated away */
export const EXIT_MIGRATED = 3;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function fail(msg: string, code = 2): number {
  process.stderr.write(`tsvmm: ${msg}\n`);
  return code;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    process.stdout.write(USAGE + '\n');
    return argv.length === 0 ? 2 : 0;
  }
  if (argv[0] === '--version' || argv[0] === '-V') {
    process.stdout.write(`tsvmm ${version()}\n`);
    return 0;
  }
  const [cmd, ...rest] = argv;
  if (cmd === 'vhost-user') return vhostUser(rest);
  if (cmd === 'ctl') return ctl(rest, (s) => process.stdout.write(s), (s) => process.stderr.write(s));
  if (cmd === 'top') return top(rest, (s) => process.stdout.write(s), (s) => process.stderr.write(s), !!process.stdout.isTTY);
  if (cmd !== 'run') return fail(`unknown command "${cmd}" (try: tsvmm --help)`);
  let values;
  try {
    ({ values } = parseArgs({
      // (a bare --rng is --rng with its defaults: parseArgs has no optional values)
      args: rest.map((a) => (a === '--rng' ? '--rng=' : a)),
      options: {
        kernel: { type: 'string' },
        restore: { type: 'string' },
        incoming: { type: 'string' },
        initrd: { type: 'string' },
        cmdline: { type: 'string' },
        mem: { type: 'string' },
        cpus: { type: 'string' },
        serial: { type: 'string' },
        'kvm-device': { type: 'string' },
        net: { type: 'string', multiple: true },
        stats: { type: 'boolean' },
        timeout: { type: 'string' },
        viommu: { type: 'boolean' },
        rng: { type: 'string' },
        'api-socket': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return fail(`${(e as Error).message.split('\n')[0]} (try: tsvmm --help)`);
  }
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (!values.kernel && !values.restore && !values.incoming) return fail('run: --kernel FILE is required (or --restore DIR, or --incoming URL)');
  if (values.restore && values.incoming) return fail('run: --restore and --incoming: a VM starts from one or the other');
  if (values.restore && (values.kernel || values.initrd || values.cmdline !== undefined)) return fail('run: --restore starts the snapshot\'s kernel where it was: --kernel, --initrd and --cmdline do not go with it');
  if (values.incoming && (values.kernel || values.initrd || values.cmdline !== undefined)) return fail('run: --incoming takes the source\'s guest where it runs: --kernel, --initrd and --cmdline do not go with it');
  let cpus: number | undefined;
  if (values.cpus !== undefined) {
    if (!/^\d+$/.test(values.cpus)) return fail(`--cpus: "${values.cpus}" is not a whole number`);
    cpus = Number(values.cpus);
  }
  let timeoutSecs: number | undefined;
  if (values.timeout !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(values.timeout) || Number(values.timeout) <= 0) return fail(`--timeout: "${values.timeout}" is not a positive number of seconds`);
    timeoutSecs = Number(values.timeout);
  }
  const serial = values.serial ?? 'stdio';
  if (!(serial === 'stdio' || serial === 'none' || (serial.startsWith('file:') && serial.length > 5)))
    return fail(`--serial: "${serial}" is not stdio, none or file:PATH`);

  let net;
  let rng: RngConfig | undefined;
  try {
    net = values.net ? values.net.map(parseNetArg) : values.restore ? undefined : [];
    rng = values.rng === undefined ? undefined : parseRngArg(values.rng);
    if (values.incoming !== undefined) parseMigrationUrl(values.incoming, '--incoming');
  } catch (e) {
    if (e instanceof UserError) return fail(e.message);
    throw e;
  }
  const vm = new Vm({ kernel: values.kernel, restore: values.restore, incoming: values.incoming, initrd: values.initrd, cmdline: values.cmdline, memory: values.mem, cpus, kvmDevice: values['kvm-device'], net, viommu: values.viommu, rng });
  let out: NodeJS.WritableStream | undefined;
  if (serial === 'stdio') out = process.stdout;
  else if (serial.startsWith('file:')) out = createWriteStream(serial.slice(5));
  if (out) vm.serial.pipe(out, { end: out !== process.stdout });
  else vm.serial.resume();

  let api: ApiServer | undefined;
  try {
    if (values['api-socket']) api = await ApiServer.open({ path: values['api-socket'], target: vmTarget(vm), log: (l) => process.stderr.write(`tsvmm: ${l}\n`) });
  } catch (e) {
    if (e instanceof UserError) return fail(e.message, 1);
    throw e;
  }
  // (a migration's progress, either way: a line per pass, the hand-over or the failure)
  vm.on('migration', (st: MigrationState) => process.stderr.write(`tsvmm: ${describeMigration(st)}\n`));
  let signalled = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signalled = sig === 'SIGINT' ? 130 : 143;
    void vm.stop();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const signalsOff = () => {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
  try {
    await vm.start();
  } catch (e) {
    await api?.close();
    signalsOff();
    // (stopped while it waited for a migration: said as any stop is)
    if (signalled) return (process.stderr.write(`tsvmm: ${describe(await vm.exited)}\n`), signalled);
    if (e instanceof UserError) return fail(e.message);
    // (its one line is the migration's own: 'incoming migration on URL failed: ...')
    if (e instanceof MigrationError) return 1;
    if (isNativeError(e)) return fail(`${e.message}`, 1);
    throw e;
  }

  const stdinIsTty = serial === 'stdio' && process.stdin.isTTY;
  if (serial === 'stdio') {
    if (stdinIsTty) process.stdin.setRawMode(true);
    process.stdin.on('data', (d: Buffer) => {
      // Ctrl-A x quits, as in QEMU's -nographic console
      if (stdinIsTty && d.includes(0x01) && d.includes(0x78)) void vm.stop();
      else vm.sendSerial(d);
    });
  }
  let timedOut = false;
  const timer =
    timeoutSecs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          void vm.stop();
        }, timeoutSecs * 1000);

  const nets = [...vm.netDevices];
  for (const d of nets) if (d.driver.describe) process.stderr.write(`tsvmm: net ${formatMac(d.net.mac)}: ${d.driver.name} ${d.driver.describe}\n`);
  const exit: VmExit = await vm.exited;
  if (timer) clearTimeout(timer);
  await api?.close();
  if (values.stats) process.stderr.write(`TSVMM-STATS ${JSON.stringify(statsOf(vm, nets))}\n`);
  if (stdinIsTty) process.stdin.setRawMode(false);
  process.stdin.pause();
  process.stdin.unref?.();
  signalsOff();
  process.stderr.write(`tsvmm: ${timedOut ? `time limit of ${timeoutSecs} s reached; ` : ''}${describe(exit)}\n`);
  if (signalled) return signalled;
  if (timedOut) return 124;
  if (exit.reason === 'crash') return 1;
  if (exit.reason === 'migrated') return EXIT_MIGRATED;
  return exit.reason === 'poweroff' ? exit.status & 0xff : 0;
}

/** --stats: each device's counters, as the VM ended. */
function statsOf(vm: Vm, nets: NetDevice[]): Record<string, unknown> {
  const devices = nets.map((d) => ({
    mac: formatMac(d.net.mac),
    threads: d.net.threadsStarted,
    broken: d.pci.brokenReason ?? null,
    stuckThreads: d.net.stuckThreads,
    ...(d.driver.counters ? { driver: d.driver.counters() } : {}),
    pairs: Array.from({ length: d.net.numQueues >> 1 }, (_, p) => d.net.queueStats(p)),
  }));
  const iommu = vm.iommu && { requests: vm.iommu.handled, faults: vm.iommu.table.faultCount, mappings: vm.iommu.table.count };
  const rng = vm.rng && { ...vm.rng.queueStats(), stuckThreads: vm.rng.stuckThreads };
  return { net: devices, ...(iommu ? { iommu } : {}), ...(rng ? { rng } : {}) };
}

function describe(e: VmExit): string {
  switch (e.reason) {
    case 'poweroff':
      return `guest powered off (status ${e.status})`;
    case 'reset':
      return `guest reset (${e.detail}); VM ended`;
    case 'crash':
      return `VM crashed: ${e.detail}`;
    case 'stopped':
      return `VM stopped (${e.detail})`;
    case 'migrated':
      return `VM ${e.detail}: it runs there now`;
  }
}

/** tsvmm vhost-user: the same dataplane and drivers, for a frontend that owns the rings. */
async function vhostUser(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: { socket: { type: 'string' }, client: { type: 'boolean' }, net: { type: 'string' }, timeout: { type: 'string' }, stats: { type: 'boolean' }, 'api-socket': { type: 'string' } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    return fail(`${(e as Error).message.split('\n')[0]} (try: tsvmm --help)`);
  }
  if (!values.socket) return fail('vhost-user: --socket PATH is required');
  if (!values.net) return fail('vhost-user: --net DRIVER,... is required');
  let driver: NetDriver;
  let net;
  try {
    net = parseNetArg(values.net);
    // (mtu=N raises the wire's MTU; vhost-user does not offer VIRTIO_NET_F_MTU: the frontend's device decides)
    driver = await createDriver(net.driver, { ...(net.options ?? {}), ...(net.queues ? { queues: String(net.queues) } : {}), ...(net.mtu ? { mtu: String(net.mtu) } : {}) });
  } catch (e) {
    if (e instanceof UserError) return fail(e.message);
    throw e;
  }
  if (driver.describe) process.stderr.write(`tsvmm: net: ${driver.name} ${driver.describe}\n`);
  const log = (l: string) => process.stderr.write(`tsvmm: ${l}\n`);
  const backend = new VhostUserBackend(driver, { queuePairs: Math.min(net.queues ?? 1, driver.caps.queuePairs), busyPollUs: net.busyPollUs, packed: net.packed, mergeable: net.mergeable, rateLimit: net.rateLimit, log });
  const server = new VhostUserServer(backend, { path: values.socket, client: values.client, log });
  let code = 0;
  const stop = (c: number) => () => {
    code = c;
    server.stop();
  };
  process.once('SIGINT', stop(130));
  process.once('SIGTERM', stop(143));
  let api: ApiServer | undefined;
  try {
    if (values['api-socket']) api = await ApiServer.open({ path: values['api-socket'], target: backendTarget(backend, server, stop(0)), log });
  } catch (e) {
    driver.close();
    if (e instanceof UserError) return fail(e.message, 1);
    throw e;
  }
  const timer = values.timeout ? setTimeout(stop(0), Number(values.timeout) * 1000) : undefined;
  try {
    await server.run();
  } catch (e) {
    if (isNativeError(e)) return fail(`vhost-user: ${e.message}`, 1);
    throw e;
  } finally {
    if (timer) clearTimeout(timer);
    await api?.close();
    driver.close();
  }
  if (values.stats) {
    const pairs = Array.from({ length: Math.min(net.queues ?? 1, driver.caps.queuePairs) }, (_, p) => backend.queueStats(p));
    process.stderr.write(`TSVMM-STATS ${JSON.stringify({ vhostUser: { connections: server.connections, errors: backend.errors, pairs, iotlb: backend.iotlbCounts, stuckThreads: backend.stuckThreads, ...(driver.counters ? { driver: driver.counters() } : {}) } })}\n`);
  }
  return code;
}
