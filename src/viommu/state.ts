// The vIOMMU's translation state in a state document: each endpoint's attachment and every mapping.
// Restored into the empty table of a fresh device, checked as a guest's requests are (domain ids in
// the advertised range, IOVAs in the input range, known permission bits, no overlap in a domain).
// Faults the threads recorded and the guest was not yet told of are not saved.
import { Fields, StateError, type StateValue } from '../state/fields.js';
import { ENDPOINT_BYPASS, ENDPOINT_NONE, INPUT_END, MAP_MMIO, MAP_READ, MAP_WRITE, MAX_MAPPINGS, type IommuTable } from './table.js';
import { DOMAIN_BITS } from './requests.js';

const MAP_WORDS = 5;

export function saveTable(table: IommuTable, endpoints: readonly number[]): StateValue {
  const maps = table.allMappings();
  return {
    endpoints: endpoints.map((endpoint) => {
      const d = table.endpointDomain(endpoint);
      return { endpoint, domain: d >= 0 ? d : null, bypass: d === ENDPOINT_BYPASS };
    }),
    mappings: new Uint8Array(maps.buffer, maps.byteOffset, maps.byteLength).slice(),
  };
}

/** Fill the (empty) table of a fresh device; the endpoints must be the ones it translates for. */
export function restoreTable(f: Fields, table: IommuTable, endpoints: readonly number[]): void {
  const eps = f.list('endpoints', endpoints.length, (v, path) => {
    const e = new Fields(v, path);
    const endpoint = e.uint('endpoint', 0xffff);
    const domain = e.any('domain') === null ? null : e.uint('domain', 2 ** DOMAIN_BITS - 1);
    const bypass = e.bool('bypass');
    e.done();
    if (bypass && domain !== null) throw new StateError(`${path}: attached to domain ${domain} and in bypass`);
    return { endpoint, at: domain ?? (bypass ? ENDPOINT_BYPASS : ENDPOINT_NONE) };
  });
  if (eps.map((e) => e.endpoint).join() !== endpoints.join()) throw new StateError(`${f.path}.endpoints: ${eps.map((e) => e.endpoint).join(',') || 'none'} saved, this vIOMMU translates for ${endpoints.join(',') || 'none'}`);
  const bytes = f.bytes('mappings', { min: 0, max: MAX_MAPPINGS * MAP_WORDS * 8, multiple: MAP_WORDS * 8 });
  f.done();
  const m = new Float64Array(bytes.slice().buffer);
  for (let i = 0; i < m.length; i += MAP_WORDS) {
    const [domain, start, end, phys, flags] = m.subarray(i, i + MAP_WORDS);
    const at = `${f.path}.mappings[${i / MAP_WORDS}]`;
    const int = (x: number, max: number) => Number.isInteger(x) && x >= 0 && x <= max;
    if (!int(domain, 2 ** DOMAIN_BITS - 1)) throw new StateError(`${at}: domain ${domain}`);
    if (!int(start, INPUT_END) || !int(end, INPUT_END) || end < start) throw new StateError(`${at}: IOVA range ${start}..${end}`);
    if (!int(phys, Number.MAX_SAFE_INTEGER - (end - start))) throw new StateError(`${at}: physical address ${phys}`);
    if (!int(flags, MAP_READ | MAP_WRITE | MAP_MMIO)) throw new StateError(`${at}: flags ${flags}`);
    if (!table.map(domain, start, end, phys, flags)) throw new StateError(`${at}: overlaps another mapping of domain ${domain}`);
  }
  for (const e of eps) table.setEndpoint(e.endpoint, e.at);
}
