// The API documents checked by their ecosystems' validators: docs/api/asyncapi.json by
// @asyncapi/parser (AsyncAPI 3) and docs/api/openapi.json by @seriousme/openapi-schema-validator
// (OpenAPI 3.1), both pinned in package-lock.json. Run by tests/it/apidocs.rs:
//   node apidocs.mjs ASYNCAPI_PATH OPENAPI_PATH
// Prints one JSON line; exits 1 when either document has an error.
import { readFile } from 'node:fs/promises';
import { Parser } from '@asyncapi/parser';
import { Validator } from '@seriousme/openapi-schema-validator';

const [asyncPath, openPath] = process.argv.slice(2);
const out = { ok: true };

const parser = new Parser();
const diagnostics = await parser.validate(await readFile(asyncPath, 'utf8'));
// Severity 0 is an error; warnings and hints are reported, not fatal.
out.asyncapi = diagnostics.map((d) => ({ severity: d.severity, code: d.code, message: d.message, path: d.path.join('.') }));
if (diagnostics.some((d) => d.severity === 0)) out.ok = false;

const v = new Validator();
const r = await v.validate(JSON.parse(await readFile(openPath, 'utf8')));
out.openapi = { valid: r.valid, version: v.version, errors: r.errors || [] };
if (!r.valid) out.ok = false;

console.log(JSON.stringify(out));
process.exit(out.ok ? 0 : 1);
