// Validates docs/openapi.json (served at GET /openapi.json) against the OpenAPI 3.1 schema with
// @seriousme/openapi-schema-validator (pinned in package.json), then resolves every $ref.
// Run by `make openapi-check` (part of `make test`).
import { Validator } from "@seriousme/openapi-schema-validator";
import { fileURLToPath } from "node:url";
import path from "node:path";

const file = process.argv[2] ?? fileURLToPath(new URL("../docs/openapi.json", import.meta.url));
const validator = new Validator();
const result = await validator.validate(file);
if (!result.valid) {
  console.error(`${file} is not a valid OpenAPI document:\n${JSON.stringify(result.errors, null, 2)}`);
  process.exit(1);
}
if (validator.version !== "3.1") {
  console.error(`${file} is OpenAPI ${validator.version}, expected 3.1`);
  process.exit(1);
}
// Every $ref must point at something (resolveRefs throws on a dangling one).
const resolved = validator.resolveRefs();
const operations = Object.values(resolved.paths).flatMap((item) => Object.keys(item));
console.log(`${path.relative(process.cwd(), file)}: valid OpenAPI ${validator.version}, ${Object.keys(resolved.paths).length} paths, ${operations.length} operations`);
