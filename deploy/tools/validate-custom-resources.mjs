// Validate prometheus-operator custom resources against the schemas of the pinned npm package
// @kubernetes-models/prometheus-operator (generated from the operator's API types, from which
// its CRDs are generated too): types, required fields, enums, patterns (durations), metadata.
//
//   node validate-custom-resources.mjs <node_modules> < objects.json
//
// stdin: a JSON array of {"name": "<file>: <Kind>/<name>", "object": {...}}; prints one error per
// line and exits 1 if any object is invalid, 2 if a kind has no model.
import { join } from "node:path";
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [nodeModules] = process.argv.slice(2);
const models = join(nodeModules, "@kubernetes-models", "prometheus-operator");
let errors = 0;
for (const { name, object } of JSON.parse(readFileSync(0, "utf8"))) {
  const [group, version] = object.apiVersion.split("/");
  const module = pathToFileURL(join(models, group, version, `${object.kind}.js`)).href;
  let Model;
  try {
    Model = (await import(module))[object.kind];
  } catch {
    console.error(`${name}: no schema for ${object.apiVersion} ${object.kind}`);
    process.exit(2);
  }
  try {
    new Model(object).validate();
  } catch (error) {
    errors += 1;
    console.error(`${name}: ${error.message}`);
  }
}
process.exit(errors ? 1 : 0);
