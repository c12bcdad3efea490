// Validate an AsyncAPI document (a file or a URL) with @asyncapi/parser: exit 1 on
// any error or warning of the parser, and print the channels and messages it read.
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const source = process.argv[2];
const text = source.startsWith("http") ? await (await fetch(source)).text() : await readFile(source, "utf8");
const { document, diagnostics } = await new Parser().parse(text);
// Severity 0 is an error, 1 a warning; hints and information are left alone.
const problems = diagnostics.filter((d) => d.severity <= 1);
for (const d of problems) {
  console.log(`${d.severity === 0 ? "error" : "warning"} ${d.code} at ${d.path.join(".")}: ${d.message}`);
}
if (!document || problems.length > 0) {
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
const messages = document.components().messages().all().length;
console.log(`valid: AsyncAPI ${document.version()}, channels ${channels.join(", ")}, ${messages} messages`);
