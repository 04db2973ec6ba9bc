// Puts the page assets into Django's static files, so every asset is served locally (no CDN),
// and installs the OHIF viewer for /ohif/. Run with `npm run build` (the Makefile does it).
//
// The viewer is the prebuilt dist/ of the npm package @ohif/app, pinned with its integrity in
// package.json ("prebuiltDependencies"): fetched with `npm pack` (its own dependency tree is
// not installable from the registry, and only its dist/ is needed), rewritten to live under
// /ohif/ instead of /, given our app-config.js, and written to pmpd_web/ohif/ (gitignored; the
// Django view pmpd_web.imaging.viewer serves it behind the login). Its ort/ folder (about
// 136 MB of ONNX runtime for OHIF's AI segmentation tools, which the platform does not offer),
// its service worker and source maps are left out. Text assets get a gzip twin for the view.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, extname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const packageJson = JSON.parse(readFileSync(join(here, "package.json"), "utf8"));

function copyPageAssets() {
  const vendor = join(here, "..", "pmpd_web", "static", "vendor");
  mkdirSync(vendor, { recursive: true });
  const assets = [
    ["htmx.org/dist/htmx.min.js", "htmx.min.js"],
    ["plotly.js-dist-min/plotly.min.js", "plotly.min.js"],
    // The accessibility tests (tests/e2e) inject it into every page: served locally, no CDN.
    ["axe-core/axe.min.js", "axe.min.js"],
  ];
  for (const [source, target] of assets) {
    const from = join(here, "node_modules", source);
    if (!existsSync(from)) {
      fail(`missing ${from}: run npm ci in frontend/ first`);
    }
    copyFileSync(from, join(vendor, target));
    console.log(`static/vendor/${target} <- ${source}`);
  }
}

function fail(message) {
  console.error(message);
  process.exit(1);
}

// ---------------------------------------------------------------------------------------------
// The OHIF viewer

const OHIF_PACKAGE = "@ohif/app";
const BASE = "/ohif/";
const viewerDir = join(here, "..", "pmpd_web", "ohif");
const configSource = join(here, "ohif-app-config.js");
// Left out: AI runtime, hosting files for other servers, the upstream configs, the service
// worker (it caches root paths; OHIF's own init script unregisters service workers), maps.
const SKIPPED = new Set(["ort", "sw.js", "app-config.js", "google.js", "_headers", "_redirects", "serve.json"]);
const SKIPPED_EXTENSIONS = new Set([".map"]);
const TEXT = new Set([".html", ".js", ".mjs", ".css", ".json"]);
const GZIPPED = new Set([".html", ".js", ".mjs", ".css", ".json", ".jsonc", ".wasm", ".svg"]);

// Each rewrite moves one kind of root-absolute path under BASE; `required` ones must match at
// least once in the whole build, so a new OHIF release that changes them fails loudly here.
const REWRITES = [
  {
    what: "window.PUBLIC_URL",
    files: /^index\.html$/,
    pattern: /window\.PUBLIC_URL="\/"/g,
    replacement: `window.PUBLIC_URL="${BASE}"`,
    required: true,
  },
  {
    what: "index.html href/src/content",
    files: /^index\.html$/,
    pattern: /(href|src|content)="\/(?!\/)/g,
    replacement: `$1="${BASE}`,
    required: true,
  },
  {
    what: "__webpack_require__.p",
    files: /\.js$/,
    pattern: /__webpack_require__\.p = "\/";/g,
    replacement: `__webpack_require__.p = "${BASE}";`,
    required: true,
  },
  {
    what: "dicom-microscopy-viewer import",
    files: /\.js$/,
    pattern: /(["'`])\/dicom-microscopy-viewer\//g,
    replacement: `$1${BASE}dicom-microscopy-viewer/`,
    required: true,
  },
  {
    what: "css url(/...)",
    files: /\.css$/,
    pattern: /url\(\/(?!\/)/g,
    replacement: `url(${BASE}`,
    required: true,
  },
  {
    what: "manifest icons",
    files: /^manifest\.json$/,
    pattern: /"\/assets\//g,
    replacement: `"${BASE}assets/`,
    required: false,
  },
];

function sha256(data) {
  return createHash("sha256").update(data).digest("hex");
}

function buildInfo(pin) {
  return {
    package: `${OHIF_PACKAGE}@${pin.version}`,
    integrity: pin.integrity,
    config: sha256(readFileSync(configSource)),
    build: sha256(readFileSync(fileURLToPath(import.meta.url))),
  };
}

function fetchDist(pin, workDir) {
  const output = execFileSync(
    "npm",
    ["pack", `${OHIF_PACKAGE}@${pin.version}`, "--json", "--pack-destination", workDir,
      "--prefer-offline", "--loglevel=error"],
    { encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
  );
  const [packed] = JSON.parse(output);
  if (packed.integrity !== pin.integrity) {
    fail(`${OHIF_PACKAGE}@${pin.version}: integrity ${packed.integrity} is not the pinned ${pin.integrity}`);
  }
  execFileSync("tar", ["-xzf", join(workDir, packed.filename), "-C", workDir, "package/dist"]);
  return join(workDir, "package", "dist");
}

function* walk(dir) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      yield* walk(path);
    } else if (entry.isFile()) {
      yield path;
    }
  }
}

function install(dist, target) {
  const hits = new Map(REWRITES.map(rewrite => [rewrite.what, 0]));
  let files = 0;
  let bytes = 0;
  const write = (name, data) => {
    const path = join(target, name);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, data);
    files += 1;
    bytes += data.length;
    if (GZIPPED.has(extname(name)) && data.length > 1024) {
      const compressed = gzipSync(data, { level: 6 });
      writeFileSync(`${path}.gz`, compressed);
      bytes += compressed.length;
    }
  };
  for (const path of walk(dist)) {
    const name = relative(dist, path).split("\\").join("/");
    if (SKIPPED.has(name.split("/")[0]) || SKIPPED_EXTENSIONS.has(extname(name))) {
      continue;
    }
    if (!TEXT.has(extname(name))) {
      write(name, readFileSync(path));
      continue;
    }
    let text = readFileSync(path, "utf8");
    for (const rewrite of REWRITES) {
      if (rewrite.files.test(name.split("/").pop())) {
        const count = text.match(rewrite.pattern)?.length ?? 0;
        hits.set(rewrite.what, hits.get(rewrite.what) + count);
        text = text.replace(rewrite.pattern, rewrite.replacement);
      }
    }
    write(name, Buffer.from(text, "utf8"));
  }
  write("app-config.js", readFileSync(configSource));
  for (const rewrite of REWRITES) {
    if (rewrite.required && hits.get(rewrite.what) === 0) {
      fail(`OHIF build: found no ${rewrite.what} to rewrite for ${BASE}; has the package changed?`);
    }
  }
  return { files, bytes, hits };
}

function buildViewer() {
  const pin = packageJson.prebuiltDependencies?.[OHIF_PACKAGE];
  if (!pin?.version || !pin?.integrity) {
    fail(`package.json: prebuiltDependencies["${OHIF_PACKAGE}"] needs a version and an integrity`);
  }
  const info = buildInfo(pin);
  const infoPath = join(viewerDir, ".build-info.json");
  if (existsSync(infoPath) && readFileSync(infoPath, "utf8") === JSON.stringify(info, null, 2)) {
    console.log(`ohif/ is up to date (${info.package})`);
    return;
  }
  const started = Date.now();
  const workDir = mkdtempSync(join(tmpdir(), "pmpd-ohif-"));
  const staging = `${viewerDir}.partial`;
  try {
    const dist = fetchDist(pin, workDir);
    rmSync(staging, { recursive: true, force: true });
    const { files, bytes, hits } = install(dist, staging);
    writeFileSync(join(staging, ".build-info.json"), JSON.stringify(info, null, 2));
    rmSync(viewerDir, { recursive: true, force: true });
    renameSync(staging, viewerDir);
    const rewritten = [...hits].map(([what, count]) => `${what}: ${count}`).join(", ");
    console.log(
      `ohif/ <- ${info.package}: ${files} files, ${(bytes / 1e6).toFixed(1)} MB with gzip twins ` +
        `(skipped ${[...SKIPPED].join(", ")}, source maps) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    console.log(`  rewritten for ${BASE}: ${rewritten}`);
  } finally {
    rmSync(workDir, { recursive: true, force: true });
    rmSync(staging, { recursive: true, force: true });
  }
}

copyPageAssets();
buildViewer();
if (!statSync(join(viewerDir, "index.html")).isFile()) {
  fail("ohif/index.html missing after the build");
}
