// Validates an AsyncAPI document with @asyncapi/parser (the validator behind the
// AsyncAPI CLI and Studio), external $refs resolved from the file's folder.
// Exit 1 on any error-level diagnostic or when the document does not parse.
// Usage: node validate-asyncapi.mjs asyncapi.yaml
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Parser } from '@asyncapi/parser';

const file = resolve(process.argv[2] ?? 'asyncapi.yaml');
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'), {
  source: pathToFileURL(file).href,
});
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = ['error', 'warning', 'info', 'hint'][d.severity] ?? d.severity;
  if (d.severity <= 1) {
    console.error(`${file}: ${level} ${d.code} at ${d.path.join('.')}: ${d.message}`);
  }
}
if (!document || errors.length > 0) {
  console.error(`${file}: INVALID (${errors.length} errors)`);
  process.exit(1);
}
const channels = document.channels().length;
const messages = document.allMessages().length;
console.log(`${file}: valid AsyncAPI ${document.version()} (${channels} channels, ${messages} messages)`);
