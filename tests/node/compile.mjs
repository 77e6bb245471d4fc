// Compiles the chain tests' own two contracts (contracts/*.sol) with the pinned solc-js and
// writes, for each, {abi, bytecode} to OUT_DIR/<Name>.json. Run by tests/it/chain.rs:
//   node compile.mjs OUT_DIR
// The Uniswap contracts are not compiled here: their published builds come from npm.
import solc from 'solc';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
const sources = {};
for (const f of ['TestToken.sol', 'V3Callee.sol']) {
  sources[f] = { content: fs.readFileSync(path.join(here, 'contracts', f), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'paris',
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } },
  },
};
const result = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (result.errors || []).filter((e) => e.severity === 'error');
if (errors.length) {
  console.error(errors.map((e) => e.formattedMessage).join('\n'));
  process.exit(1);
}
fs.mkdirSync(out, { recursive: true });
for (const [, contracts] of Object.entries(result.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    fs.writeFileSync(path.join(out, name + '.json'), JSON.stringify({ abi: c.abi, bytecode: '0x' + c.evm.bytecode.object }));
  }
}
console.log(JSON.stringify({ ok: true, solc: solc.version(), out }));
