// Builds the native syscall shim with node-gyp against the headers of the Node that runs this script,
// so no header download is ever attempted (this machine has no route to nodejs.org).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';

const nodedir = dirname(dirname(process.execPath));
if (!existsSync(join(nodedir, 'include', 'node', 'node_api.h'))) {
  console.error(`tsvmm: Node headers not found under ${nodedir}/include/node; install your distribution's nodejs-dev package`);
  process.exit(1);
}
const gyp = process.env.npm_config_node_gyp;
const cmd = gyp ? [process.execPath, gyp] : ['npx', 'node-gyp'];
const r = spawnSync(cmd[0], [...cmd.slice(1), 'rebuild', `--nodedir=${nodedir}`], { stdio: 'inherit' });
process.exit(r.status ?? 1);
