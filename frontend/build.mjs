// Copies the page assets from node_modules into Django's static files, so every asset is
// served locally (no CDN). Run with `npm run build` (the Makefile does it).
import { copyFileSync, mkdirSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const vendor = join(here, "..", "pmpd_web", "static", "vendor");
mkdirSync(vendor, { recursive: true });

const assets = [
  ["htmx.org/dist/htmx.min.js", "htmx.min.js"],
  ["plotly.js-dist-min/plotly.min.js", "plotly.min.js"],
];
for (const [source, target] of assets) {
  const from = join(here, "node_modules", source);
  if (!existsSync(from)) {
    console.error(`missing ${from}: run npm ci in frontend/ first`);
    process.exit(1);
  }
  copyFileSync(from, join(vendor, target));
  console.log(`static/vendor/${target} <- ${source}`);
}
