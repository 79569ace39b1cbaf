// PUT /vm/shutdown over the API socket of `tsvmm run`: the ACPI power button pressed for the test guest
// (mode=button, which powers off when it sees the press), after a pause (the API resumes a paused VM
// before it presses the button). Runs where the VM has shutdown() and the guest its button mode.
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as acpi from '../src/boot/acpi.js';
import { Vm } from '../src/index.js';
import { CLI, TEST_GUEST, guestResult, haveKvm } from './helpers/env.js';
import { ctlSend } from '../src/api/ctl.js';

const ged = acpi as unknown as { ACPI_GED_GSI?: number; ACPI_GED_PORT?: number };
const hasShutdown = typeof (Vm.prototype as unknown as { shutdown?: unknown }).shutdown === 'function' && ged.ACPI_GED_GSI !== undefined;

describe.runIf(haveKvm() && hasShutdown)('shutdown over the API socket', () => {
  it('resumes a paused VM and presses its power button: the guest powers off, tsvmm exits 0 and removes the socket', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvmm-api-sd-'));
    const sock = join(dir, 'api.sock');
    try {
      const p = spawn(process.execPath, [CLI, 'run', '--kernel', TEST_GUEST, '--mem', '64M', '--api-socket', sock, '--cmdline', `mode=button gsi=${ged.ACPI_GED_GSI} port=${ged.ACPI_GED_PORT}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      p.stdout.on('data', (d: Buffer) => (out += d.toString('latin1')));
      p.stderr.on('data', (d: Buffer) => (err += d.toString()));
      const done = new Promise<number | null>((r) => p.on('close', r));
      for (const end = Date.now() + 120_000; Date.now() < end && !out.includes('BUTTON-READY\n'); ) await new Promise((r) => setTimeout(r, 50));
      expect(out).toContain('BUTTON-READY');
      expect((await ctlSend(sock, { method: 'PUT', path: '/vm/pause' })).status).toBe(204);
      const r = await ctlSend(sock, { method: 'PUT', path: '/vm/shutdown', body: { deadline_ms: 60_000 } });
      expect(r.status, r.body).toBe(202);
      expect(await done).toBe(0);
      expect(guestResult(out), out).toMatchObject({ mode: 'button', irqs: 1, events: 1, ok: true });
      expect(err).toContain('tsvmm: guest powered off (status 0)');
      expect(existsSync(sock)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);
});
