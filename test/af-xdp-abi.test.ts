// The AF_XDP and bpf() numbers and layouts in src/drivers/af-xdp/abi.ts against the uapi headers,
// compiled with the system's C compiler.
import { describe, it, expect, beforeAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as A from '../src/drivers/af-xdp/abi.js';

/** our name → the C expression it must equal */
const CHECKS: Array<[string, number, string]> = [
  ['AF_XDP', A.AF_XDP, 'AF_XDP'],
  ['SOL_XDP', A.SOL_XDP, 'SOL_XDP'],
  ['XDP_MMAP_OFFSETS', A.XDP_MMAP_OFFSETS, 'XDP_MMAP_OFFSETS'],
  ['XDP_RX_RING', A.XDP_RX_RING, 'XDP_RX_RING'],
  ['XDP_TX_RING', A.XDP_TX_RING, 'XDP_TX_RING'],
  ['XDP_UMEM_REG', A.XDP_UMEM_REG, 'XDP_UMEM_REG'],
  ['XDP_UMEM_FILL_RING', A.XDP_UMEM_FILL_RING, 'XDP_UMEM_FILL_RING'],
  ['XDP_UMEM_COMPLETION_RING', A.XDP_UMEM_COMPLETION_RING, 'XDP_UMEM_COMPLETION_RING'],
  ['XDP_STATISTICS', A.XDP_STATISTICS, 'XDP_STATISTICS'],
  ['XDP_OPTIONS', A.XDP_OPTIONS, 'XDP_OPTIONS'],
  ['XDP_OPTIONS_ZEROCOPY', A.XDP_OPTIONS_ZEROCOPY, 'XDP_OPTIONS_ZEROCOPY'],
  ['XDP_COPY', A.XDP_COPY, 'XDP_COPY'],
  ['XDP_ZEROCOPY', A.XDP_ZEROCOPY, 'XDP_ZEROCOPY'],
  ['XDP_USE_NEED_WAKEUP', A.XDP_USE_NEED_WAKEUP, 'XDP_USE_NEED_WAKEUP'],
  ['XDP_RING_NEED_WAKEUP', A.XDP_RING_NEED_WAKEUP, 'XDP_RING_NEED_WAKEUP'],
  ['XDP_PGOFF_RX_RING', A.XDP_PGOFF_RX_RING, 'XDP_PGOFF_RX_RING'],
  ['XDP_PGOFF_TX_RING', A.XDP_PGOFF_TX_RING, 'XDP_PGOFF_TX_RING'],
  ['XDP_UMEM_PGOFF_FILL_RING', A.XDP_UMEM_PGOFF_FILL_RING, 'XDP_UMEM_PGOFF_FILL_RING'],
  ['XDP_UMEM_PGOFF_COMPLETION_RING', A.XDP_UMEM_PGOFF_COMPLETION_RING, 'XDP_UMEM_PGOFF_COMPLETION_RING'],
  ['SIZEOF_UMEM_REG', A.SIZEOF_UMEM_REG, 'sizeof(struct xdp_umem_reg)'],
  ['SIZEOF_MMAP_OFFSETS', A.SIZEOF_MMAP_OFFSETS, 'sizeof(struct xdp_mmap_offsets)'],
  ['SIZEOF_SOCKADDR_XDP', A.SIZEOF_SOCKADDR_XDP, 'sizeof(struct sockaddr_xdp)'],
  ['SIZEOF_XDP_DESC', A.SIZEOF_XDP_DESC, 'sizeof(struct xdp_desc)'],
  ['SIZEOF_XDP_STATISTICS', A.SIZEOF_XDP_STATISTICS, 'sizeof(struct xdp_statistics)'],
  ['umem_reg.chunk_size', 16, 'offsetof(struct xdp_umem_reg, chunk_size)'],
  ['mmap_offsets.tx', 32, 'offsetof(struct xdp_mmap_offsets, tx)'],
  ['mmap_offsets.fr', 64, 'offsetof(struct xdp_mmap_offsets, fr)'],
  ['mmap_offsets.cr', 96, 'offsetof(struct xdp_mmap_offsets, cr)'],
  ['sockaddr_xdp.sxdp_ifindex', 4, 'offsetof(struct sockaddr_xdp, sxdp_ifindex)'],
  ['sockaddr_xdp.sxdp_queue_id', 8, 'offsetof(struct sockaddr_xdp, sxdp_queue_id)'],
  ['xdp_desc.len', 8, 'offsetof(struct xdp_desc, len)'],
  ['SO_BUSY_POLL', A.SO_BUSY_POLL, 'SO_BUSY_POLL'],
  ['SO_PREFER_BUSY_POLL', A.SO_PREFER_BUSY_POLL, 'SO_PREFER_BUSY_POLL'],
  ['SO_BUSY_POLL_BUDGET', A.SO_BUSY_POLL_BUDGET, 'SO_BUSY_POLL_BUDGET'],
  ['BPF_MAP_CREATE', A.BPF_MAP_CREATE, 'BPF_MAP_CREATE'],
  ['BPF_MAP_UPDATE_ELEM', A.BPF_MAP_UPDATE_ELEM, 'BPF_MAP_UPDATE_ELEM'],
  ['BPF_MAP_DELETE_ELEM', A.BPF_MAP_DELETE_ELEM, 'BPF_MAP_DELETE_ELEM'],
  ['BPF_PROG_LOAD', A.BPF_PROG_LOAD, 'BPF_PROG_LOAD'],
  ['BPF_LINK_CREATE', A.BPF_LINK_CREATE, 'BPF_LINK_CREATE'],
  ['BPF_MAP_TYPE_XSKMAP', A.BPF_MAP_TYPE_XSKMAP, 'BPF_MAP_TYPE_XSKMAP'],
  ['BPF_PROG_TYPE_XDP', A.BPF_PROG_TYPE_XDP, 'BPF_PROG_TYPE_XDP'],
  ['BPF_XDP', A.BPF_XDP, 'BPF_XDP'],
  ['BPF_FUNC_redirect_map', A.BPF_FUNC_redirect_map, 'BPF_FUNC_redirect_map'],
  ['SIZEOF_BPF_ATTR', A.SIZEOF_BPF_ATTR, 'sizeof(union bpf_attr)'],
  ['ATTR.mapType', A.ATTR.mapType, 'offsetof(union bpf_attr, map_type)'],
  ['ATTR.keySize', A.ATTR.keySize, 'offsetof(union bpf_attr, key_size)'],
  ['ATTR.valueSize', A.ATTR.valueSize, 'offsetof(union bpf_attr, value_size)'],
  ['ATTR.maxEntries', A.ATTR.maxEntries, 'offsetof(union bpf_attr, max_entries)'],
  ['ATTR.mapName', A.ATTR.mapName, 'offsetof(union bpf_attr, map_name)'],
  ['ATTR.mapFd', A.ATTR.mapFd, 'offsetof(union bpf_attr, map_fd)'],
  ['ATTR.key', A.ATTR.key, 'offsetof(union bpf_attr, key)'],
  ['ATTR.value', A.ATTR.value, 'offsetof(union bpf_attr, value)'],
  ['ATTR.elemFlags', A.ATTR.elemFlags, 'offsetof(union bpf_attr, flags)'],
  ['ATTR.progType', A.ATTR.progType, 'offsetof(union bpf_attr, prog_type)'],
  ['ATTR.insnCnt', A.ATTR.insnCnt, 'offsetof(union bpf_attr, insn_cnt)'],
  ['ATTR.insns', A.ATTR.insns, 'offsetof(union bpf_attr, insns)'],
  ['ATTR.license', A.ATTR.license, 'offsetof(union bpf_attr, license)'],
  ['ATTR.logLevel', A.ATTR.logLevel, 'offsetof(union bpf_attr, log_level)'],
  ['ATTR.logSize', A.ATTR.logSize, 'offsetof(union bpf_attr, log_size)'],
  ['ATTR.logBuf', A.ATTR.logBuf, 'offsetof(union bpf_attr, log_buf)'],
  ['ATTR.progName', A.ATTR.progName, 'offsetof(union bpf_attr, prog_name)'],
  ['ATTR.expectedAttachType', A.ATTR.expectedAttachType, 'offsetof(union bpf_attr, expected_attach_type)'],
  ['ATTR.linkProgFd', A.ATTR.linkProgFd, 'offsetof(union bpf_attr, link_create.prog_fd)'],
  ['ATTR.linkTargetIfindex', A.ATTR.linkTargetIfindex, 'offsetof(union bpf_attr, link_create.target_ifindex)'],
  ['ATTR.linkAttachType', A.ATTR.linkAttachType, 'offsetof(union bpf_attr, link_create.attach_type)'],
  ['ATTR.linkFlags', A.ATTR.linkFlags, 'offsetof(union bpf_attr, link_create.flags)'],
  ['XDP_FLAGS_SKB_MODE', A.XDP_FLAGS_SKB_MODE, 'XDP_FLAGS_SKB_MODE'],
  ['XDP_FLAGS_DRV_MODE', A.XDP_FLAGS_DRV_MODE, 'XDP_FLAGS_DRV_MODE'],
  ['XDP_MD_RX_QUEUE_INDEX', A.XDP_MD_RX_QUEUE_INDEX, 'offsetof(struct xdp_md, rx_queue_index)'],
  ['XDP_PASS', A.XDP_PASS, 'XDP_PASS'],
  ['MSG_DONTWAIT', A.MSG_DONTWAIT, 'MSG_DONTWAIT'],
  ['POLLIN', A.POLLIN, 'POLLIN'],
];

let real: Map<string, number>;

beforeAll(() => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-xdp-abi-'));
  const src = [
    '#include <stdio.h>', '#include <stddef.h>', '#include <poll.h>', '#include <sys/socket.h>',
    '#include <linux/bpf.h>', '#include <linux/if_link.h>', '#include <linux/if_xdp.h>',
    'int main(void) {',
    ...CHECKS.map(([name, , expr]) => `printf("%s %llu\\n", "${name}", (unsigned long long)(${expr}));`),
    'return 0; }',
  ].join('\n');
  writeFileSync(join(dir, 'abi.c'), src);
  execFileSync('cc', ['-o', join(dir, 'abi'), join(dir, 'abi.c')]);
  const out = execFileSync(join(dir, 'abi'), { encoding: 'utf8' });
  rmSync(dir, { recursive: true });
  real = new Map(out.trim().split('\n').map((l) => {
    const [k, v] = l.split(' ');
    return [k, Number(v)];
  }));
});

describe('AF_XDP and bpf() ABI match the uapi headers', () => {
  it.each(CHECKS.map(([name, ours]) => [name, ours]))('%s = %d', (name, ours) => {
    expect(real.get(name as string)).toBe(ours);
  });
});
