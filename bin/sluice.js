#!/usr/bin/env node
// The package's one bin. The sources are TypeScript run by Node's built-in type stripping,
// so there is no build step; that needs Node >= 22.18 (the `node` devDependency pins 24).
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  process.stderr.write(
    `sluice: Node ${process.versions.node} is too old; run it through npm (npx sluice, npm run ...) so the project's Node 24 is used\n`,
  );
  process.exit(2);
}
await import('../cli/main.ts');
