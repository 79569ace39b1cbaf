// Which driver `--net NAME,...` means: built-in names, or a path to a plugin module.
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { UserError } from '../errors.js';
import { DRIVER_COMMON_OPTIONS, type DriverModule, type NetDriver } from './api.js';

const BUILTIN: Record<string, string> = {
  tap: './tap/index.js',
  null: './null/index.js',
  'af-xdp': './af-xdp/index.js',
};

export function builtinDrivers(): string[] {
  return Object.keys(BUILTIN);
}

/** Load a driver by built-in name or module path and create it with `options`. */
export async function createDriver(name: string, options: Record<string, string>): Promise<NetDriver> {
  let url: string;
  if (BUILTIN[name]) url = new URL(BUILTIN[name], import.meta.url).href;
  else if (name.includes('/') || name.endsWith('.js') || name.endsWith('.mjs')) url = pathToFileURL(resolve(name)).href;
  else throw new UserError(`--net: unknown driver "${name}" (built in: ${builtinDrivers().join(', ')}; or a path to a driver module)`);
  let mod: Partial<DriverModule>;
  try {
    mod = (await import(url)) as Partial<DriverModule>;
  } catch (e) {
    throw new UserError(`--net: cannot load driver module ${name}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (typeof mod.create !== 'function' || typeof mod.openQueue !== 'function') throw new UserError(`--net: ${name} is not a driver module (it must export create and openQueue)`);
  if (mod.options) checkOptions(name, mod.options, options);
  return mod.create(options);
}

function checkOptions(driver: string, known: readonly string[], options: Record<string, string>): void {
  for (const key of Object.keys(options)) {
    if (known.includes(key) || DRIVER_COMMON_OPTIONS.includes(key)) continue;
    const all = [...new Set([...known, ...DRIVER_COMMON_OPTIONS])].sort();
    throw new UserError(`--net ${driver}: unknown option "${key}" (this driver takes: ${all.join(', ')}; and for any driver: mac, threads, packed, mrg-rxbuf, speed, duplex and the rate limits)`);
  }
}
