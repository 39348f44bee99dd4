// Validates Istio and Gateway API objects against @kubernetes-models/istio's and
// @kubernetes-models/gateway-api's schemas (installed by scripts/test.sh under .tools/npm). Usage: node validate.mjs NODE_MODULES FILE.json
// where FILE.json is an array of objects; prints each invalid one and exits 1.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const [modules, file] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(file, 'utf8'));
let invalid = 0;
for (const object of objects) {
  const [group, version] = object.apiVersion.split('/');
  const model = group.endsWith('.k8s.io') ? 'gateway-api' : 'istio';
  const path = `${modules}/@kubernetes-models/${model}/${group}/${version}/${object.kind}.js`;
  const module = await import(pathToFileURL(path));
  try {
    new module[object.kind](object).validate();
  } catch (e) {
    invalid += 1;
    console.log(`${object.kind} ${object.metadata?.namespace ?? ''}/${object.metadata?.name}: ${e.message}`);
  }
}
console.log(`${objects.length - invalid} of ${objects.length} valid`);
process.exit(invalid === 0 ? 0 : 1);
