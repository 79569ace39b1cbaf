// Descriptors of every kind a frontend might pass, made fresh for each message (the code under test
// takes them over and closes them): the right kind and the wrong ones.
import { openSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, EFD_NONBLOCK, AF_UNIX, SOCK_STREAM } from '../native.js';

export const FD_KINDS = ['eventfd', 'eventfd-blocking', 'eventfd-at-max', 'memfd', 'memfd-empty', 'dev-null', 'regular-file', 'socket'] as const;
export type FdKind = (typeof FD_KINDS)[number];

const AT_MAX = new BigUint64Array([0xfffffffffffffffen]);

export class FdFactory {
  private readonly dir = mkdtempSync(join(tmpdir(), 'tsvmm-fuzz-'));
  private readonly file = join(this.dir, 'regular');
  constructor() {
    writeFileSync(this.file, new Uint8Array(65536));
  }

  /** A new descriptor of this kind (`memfd` of `size` bytes). */
  make(kind: FdKind, size = 65536): number {
    switch (kind) {
      case 'eventfd':
        return native.eventfd(0, EFD_NONBLOCK);
      case 'eventfd-blocking':
        return native.eventfd(0, 0);
      case 'eventfd-at-max': {
        const fd = native.eventfd(0, EFD_NONBLOCK);
        native.write(fd, AT_MAX);
        return fd;
      }
      case 'memfd':
      case 'memfd-empty': {
        const fd = native.memfdCreate('tsvmm-fuzz', 0);
        if (kind === 'memfd') native.ftruncate(fd, size);
        return fd;
      }
      case 'dev-null':
        return openSync('/dev/null', 'r+');
      case 'regular-file':
        return openSync(this.file, 'r+');
      case 'socket':
        return native.socket(AF_UNIX, SOCK_STREAM, 0);
    }
  }

  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
