// Validate a glTF/GLB file with the Khronos glTF validator and print the report as JSON.
// Usage: node tests/validate_gltf.mjs FILE
// The validator is the npm package gltf-validator, installed by `make test` under .tools/
// (override the folder with GLTF_VALIDATOR_DIR). Exit 0 with the report on stdout, 2 on a bad
// argument, a missing validator or an unreadable asset.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const file = process.argv[2];
if (!file) {
  console.error("usage: node tests/validate_gltf.mjs FILE");
  process.exit(2);
}
const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const moduleDir = process.env.GLTF_VALIDATOR_DIR ?? join(root, ".tools", "node_modules", "gltf-validator");
let validator;
try {
  validator = createRequire(import.meta.url)(moduleDir);
} catch (err) {
  console.error(`gltf-validator not found at ${moduleDir}: run make test (npm install --prefix .tools)`);
  process.exit(2);
}
try {
  const bytes = new Uint8Array(readFileSync(file));
  const report = await validator.validateBytes(bytes, { uri: file, maxIssues: 0, writeTimestamp: false });
  console.log(JSON.stringify(report));
} catch (err) {
  console.error(`validation failed for ${file}: ${err}`);
  process.exit(2);
}
