// Run a guest through the library and collect its serial output and how it ended.
import { Vm, type VmConfig, type VmExit } from '../../src/index.js';

export interface GuestRun {
  output: string;
  exit: VmExit;
}

export async function runGuest(config: VmConfig, opts: { timeoutMs?: number; onOutput?: (all: string, vm: Vm) => void } = {}): Promise<GuestRun> {
  const vm = new Vm(config);
  let output = '';
  vm.serial.on('data', (d: Buffer) => {
    output += d.toString('latin1');
    opts.onOutput?.(output, vm);
  });
  await vm.start();
  const timer = setTimeout(() => void vm.stop(), opts.timeoutMs ?? 30_000);
  const exit = await vm.exited;
  clearTimeout(timer);
  // let the serial stream deliver its last chunk
  await new Promise((r) => setImmediate(r));
  return { output, exit };
}
