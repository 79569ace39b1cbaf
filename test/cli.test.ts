// The launcher: a real boot, and one clear line with a non-zero exit for every kind of bad input.
import { describe, it, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI, TEST_GUEST, guestResult, haveKvm, which } from './helpers/env.js';

function tsvmm(args: string[], opts: { prefix?: string[] } = {}) {
  const cmd = [...(opts.prefix ?? []), process.execPath, CLI, ...args];
  const r = spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'] });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** One line, naming the problem, no stack trace. */
function expectOneLineError(r: ReturnType<typeof tsvmm>, pattern: RegExp, status = 2) {
  expect(r.status).toBe(status);
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^tsvmm: /);
  expect(lines[0]).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
}

describe('tsvmm CLI', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvmm-cli-'));
  const junk = join(dir, 'junk.bin');
  writeFileSync(junk, 'this is not a kernel\n'.repeat(100));

  it('prints help and version', () => {
    expect(tsvmm(['--help'])).toMatchObject({ status: 0, stdout: expect.stringContaining('tsvmm run --kernel FILE') });
    expect(tsvmm(['--version']).stdout).toMatch(/^tsvmm \d+\.\d+\.\d+\n$/);
  });

  it.each([
    [['frobnicate'], /unknown command "frobnicate"/],
    [['run', '--kernal', 'x'], /--kernal/],
    [['run'], /--kernel FILE is required/],
    [['run', '--kernel', '/nonexistent/vmlinux'], /--kernel: cannot read \/nonexistent\/vmlinux: no such file/],
    [['run', '--kernel', TEST_GUEST, '--initrd', '/nonexistent/initrd'], /--initrd: cannot read/],
    [['run', '--kernel', TEST_GUEST, '--mem', '12Q'], /--mem: "12Q" is not a size/],
    [['run', '--kernel', TEST_GUEST, '--mem', '1M'], /--mem: at least 16M/],
    [['run', '--kernel', TEST_GUEST, '--mem', '100001K'], /multiple of 2M/],
    [['run', '--kernel', TEST_GUEST, '--cpus', 'two'], /--cpus: "two" is not a whole number/],
    [['run', '--kernel', TEST_GUEST, '--cpus', '0'], /--cpus: must be a whole number of at least 1/],
    [['run', '--kernel', TEST_GUEST, '--serial', 'tcp:1234'], /--serial: "tcp:1234"/],
    [['run', '--kernel', TEST_GUEST, '--timeout', 'soon'], /--timeout: "soon" is not a positive number/],
    [['run', '--kernel', TEST_GUEST, '--kvm-device', '/nonexistent/kvm'], /\/nonexistent\/kvm does not exist/],
    [['run', '--kernel', TEST_GUEST, '--net', 'tap,ifname=t0,packed=maybe'], /--net: packed=maybe is not on or off/],
    [['run', '--kernel', TEST_GUEST, '--rng=packed=maybe'], /--rng: "packed=maybe" is not packed=on or packed=off/],
    // a misspelt driver option is refused before the driver opens anything (no tap is created)
    [['vhost-user', '--socket', join(dir, 'vu.sock'), '--net', 'null,sise=64'], /--net null: unknown option "sise" \(this driver takes: busy-poll, loop, mtu, queues, rx, size;/],
    [['vhost-user', '--socket', join(dir, 'vu.sock'), '--net', 'tap,ifname=cli-no-tap,mrg_rxbuf=off'], /--net tap: unknown option "mrg_rxbuf" \(this driver takes: busy-poll, dev, ifname, mtu, queues, sndbuf, uring;/],
  ])('rejects %j with one clear line', (args, pattern) => {
    expectOneLineError(tsvmm(args as string[]), pattern as RegExp);
  });

  it.runIf(haveKvm())('rejects a file that is no kernel', () => {
    expectOneLineError(tsvmm(['run', '--kernel', junk]), /--kernel: unknown kernel format/);
  });

  it.runIf(haveKvm())('rejects more vCPUs than KVM allows', () => {
    expectOneLineError(tsvmm(['run', '--kernel', TEST_GUEST, '--cpus', '9999']), /--cpus: this KVM allows at most \d+ vCPUs/);
  });

  it.runIf(haveKvm() && which('setpriv') && process.getuid?.() === 0)('says what to do without permission on /dev/kvm', () => {
    // as nobody, root's 0600 /dev/kvm cannot be opened
    const r = tsvmm(['run', '--kernel', TEST_GUEST], { prefix: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
    expectOneLineError(r, /no permission to open \/dev\/kvm: add yourself to the kvm group or run as root/);
  });

  it.runIf(haveKvm())('boots the test guest with the console on stdout and exits with its status', () => {
    const r = tsvmm(['run', '--kernel', TEST_GUEST, '--cmdline', 'mode=hello', '--mem', '64M']);
    expect(r.status).toBe(0);
    expect(guestResult(r.stdout)).toMatchObject({ ok: true, cpl: 3 });
    expect(r.stderr).toBe('tsvmm: guest powered off (status 0)\n');
    const f = tsvmm(['run', '--kernel', TEST_GUEST, '--cmdline', 'mode=fault', '--mem', '64M']);
    expect(f.status).toBe(0x7f);
  });

  it.runIf(haveKvm())('boots with a virtio-rng device (--rng, --rng=packed=off) and says its counters with --stats', () => {
    for (const rng of ['--rng', '--rng=packed=off']) {
      const r = tsvmm(['run', '--kernel', TEST_GUEST, '--cmdline', 'mode=hello', '--mem', '64M', rng, '--stats']);
      expect(r.status, r.stderr).toBe(0);
      const stats = JSON.parse(/^TSVMM-STATS (.*)$/m.exec(r.stderr)![1]);
      // (the test guest has no rng driver: the device is there, never started)
      expect(stats.rng).toMatchObject({ packets: 0, bytes: 0, stuckThreads: 0 });
    }
  });

  it.runIf(haveKvm())('stops a wedged guest at --timeout with status 124', () => {
    const r = tsvmm(['run', '--kernel', TEST_GUEST, '--cmdline', 'mode=hang', '--mem', '64M', '--cpus', '2', '--timeout', '1']);
    expect(r.status).toBe(124);
    expect(r.stdout).toContain('hanging');
    // where the guest was: a hung guest's vCPU names its instruction pointer
    expect(r.stderr).toMatch(/^tsvmm: time limit of 1 s reached; VM stopped \(stopped by the host; vcpu0 at rip 0x[0-9a-f]+(, vcpu1 at rip 0x[0-9a-f]+)?\)\n$/);
  });

  it.runIf(haveKvm())('writes the console to a file with --serial file:PATH', () => {
    const log = join(dir, 'console.log');
    const r = tsvmm(['run', '--kernel', TEST_GUEST, '--cmdline', 'mode=hello', '--mem', '64M', '--serial', `file:${log}`]);
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('');
    expect(guestResult(readFileSync(log, 'utf8'))).toMatchObject({ ok: true });
  });

  it('cleans up', () => rmSync(dir, { recursive: true }));
});
