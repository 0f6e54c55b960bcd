/**
 * Writes the man page rendered from the option table: `bun scripts/gen-man.ts [out]`
 * (default docs/escp.1). test/help.test.ts checks that the committed page is current.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { manPage } from "../src/cli/help.ts";

writeFileSync(process.argv[2] ?? join(import.meta.dir, "../docs/escp.1"), manPage());
