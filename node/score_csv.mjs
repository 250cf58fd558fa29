// Score a CSV series with an edgeae export in Node.js: the detector graph on onnxruntime-node.
//
//   node node/score_csv.mjs EXPORT_DIR DATA.csv [--variant fp32|fp16|int8] [--missing skip|refuse|interpolate]
//                           [--max-gap N] [--columns A,B,...] [--no-header] [--json] [--trusted-key PEM]
//
// Checks the export's golden vectors first (exit 6 if this runtime misses them), then prints one
// line per window: its first row (0-based), its score, its flag and whether it is missing (CSV, or
// one JSON object with a summary); the CSV form says the summary in one line on stderr.
// The separator (comma, semicolon, tab) is read from the header line. The features are the columns
// the model was trained on (found by name), else every column; --columns names them (or gives
// 0-based indices where no column has that name). --no-header reads a file without a header row:
// every line is data, the columns are named by position 1, 2, ... (so --columns 2,3 picks the
// second and third), and without --columns the file must hold exactly the model's features; a
// first line of numbers only is refused unless --no-header is given. A missing value (empty, NA,
// NaN, nan, null, NULL, N/A) is, with --missing: skip (the default) kept, and a window holding one
// reported as missing (no score, no flag); refuse: exit 3 naming the count per column; interpolate:
// filled on a line inside runs of at most --max-gap rows (default 5), any other left as skip leaves it.
// Bad data exits 3 with one line, as `edgeae score` does. --trusted-key PEM (default: $EDGEAE_TRUSTED_KEY), a PEM
// EC public key, first checks the export's signature (signature.mjs) and refuses an unsigned export, or one that
// changed since it was signed or was signed by another key, with exit 4; without a key an unsigned export is noted.
import { access, readFile } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-node";

import {
  DEFAULT_MAX_GAP, DEFAULT_MISSING, EdgeError, checkMissingOptions, matchTrained, openExport, parseCsv, summarize,
} from "./edgeae.mjs";
import { SIGNATURE_FILE, verifySignedExport } from "./signature.mjs";

const USAGE = "usage: node score_csv.mjs EXPORT_DIR DATA.csv [--variant fp32|fp16|int8] " +
              "[--missing skip|refuse|interpolate] [--max-gap N] [--columns A,B,...] [--no-header] [--json] " +
              "[--trusted-key PEM]";
const VALUED = new Set(["--variant", "--missing", "--max-gap", "--columns", "--trusted-key"]);

// --columns as names; an empty list or name is refused, since ignoring it would silently use every column.
function splitColumns(columns) {
  if (columns === undefined) return null;
  const names = columns.split(",").map((c) => c.trim());
  if (!names.some(Boolean)) {
    throw new EdgeError(`--columns '${columns}' names no column; give comma-separated names or indices, or leave it out`, 2);
  }
  if (!names.every(Boolean)) {
    throw new EdgeError(`--columns '${columns}' has an empty column name; separate names with single commas`, 2);
  }
  return names;
}

// The command line: two paths, --json, --no-header, and the options that take a value (each once).
function parseArgs(argv) {
  const options = new Map(), paths = [];
  let json = false, header = true;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--json") json = true;
    else if (arg === "--no-header") header = false;
    else if (VALUED.has(arg)) {
      if (i + 1 >= argv.length || options.has(arg)) throw new EdgeError(USAGE, 2);
      options.set(arg, argv[++i]);
    } else if (arg.startsWith("--")) throw new EdgeError(`no option ${arg}; ${USAGE}`, 2);
    else paths.push(arg);
  }
  if (paths.length !== 2) throw new EdgeError(USAGE, 2);
  const gap = options.get("--max-gap") ?? String(DEFAULT_MAX_GAP);
  const missing = options.get("--missing") ?? DEFAULT_MISSING, maxGap = /^\d+$/.test(gap) ? Number(gap) : gap;
  checkMissingOptions(missing, maxGap);
  return { folder: paths[0], data: paths[1], json, variant: options.get("--variant") ?? "fp32",
           missing, maxGap, header, columns: splitColumns(options.get("--columns")),
           trustedKey: options.get("--trusted-key") ?? (process.env.EDGEAE_TRUSTED_KEY || null) };
}

// With a trusted key: the export's signature must hold (exit 4 otherwise). Without one: true for an unsigned
// export, which is noted once it has been scored (a run that fails says its one error line alone).
async function checkSignature(folder, keyFile) {
  if (!keyFile) {
    if (!["", "0"].includes(process.env.EDGEAE_QUIET_UNSIGNED ?? "")) return false;
    try {
      await access(path.join(folder, SIGNATURE_FILE));
      return false;
    } catch {
      return true;
    }
  }
  let pem;
  try {
    pem = await readFile(keyFile);
  } catch (error) {
    throw new EdgeError(`trusted key ${keyFile}: ${error.code === "ENOENT" ? "not found" : error.message}`, 2);
  }
  await verifySignedExport(folder, pem, `trusted key ${keyFile}`);
  return false;
}

async function main(argv) {
  const { folder, data, json, variant, missing, maxGap, header, columns, trustedKey } = parseArgs(argv);
  const unsigned = await checkSignature(folder, trustedKey);
  const readExportFile = async (name) => {
    try {
      return new Uint8Array(await readFile(path.join(folder, name)));
    } catch (error) {
      throw new EdgeError(`${path.join(folder, name)}: ${error.code === "ENOENT" ? "not found" : error.message}`,
                          name === "manifest.json" ? 2 : 4);
    }
  };
  const exp = await openExport(ort, readExportFile, variant);
  const golden = await exp.checkGolden();
  let text;
  try {
    text = await readFile(data, "utf8");
  } catch (error) {
    throw new EdgeError(`${data}: ${error.code === "ENOENT" ? "not found" : error.message}`, 2);
  }
  // Without a header the model's column names cannot be found: its features are taken by position.
  const parsed = parseCsv(text, columns ?? (header ? exp.columns : null), path.basename(data),
                          { missing, maxGap, header });
  const series = columns && header ? matchTrained(parsed, exp.columns) : parsed;
  const result = await exp.score(series);
  const { starts, scores, flags, missing: gaps } = result;
  const summary = { ...summarize(result), missing_values: series.missingValues,
                    interpolated_values: series.interpolatedValues };
  if (json) {
    process.stdout.write(JSON.stringify({
      file: exp.file, threshold: exp.threshold, golden, window_start: starts,
      score: Array.from(scores, (v, i) => (gaps[i] ? null : v)),
      anomaly: Array.from(flags, (f, i) => (gaps[i] ? null : Boolean(f))),
      missing: Array.from(gaps, Boolean), summary,
    }) + "\n");
  } else {
    process.stdout.write("window_start,score,anomaly,missing\n");
    starts.forEach((s, i) => process.stdout.write(gaps[i] ? `${s},,,1\n` : `${s},${scores[i]},${flags[i]},0\n`));
    process.stderr.write(`${summary.windows} windows: ${summary.flagged} flagged, ${summary.normal} normal, ` +
                         `${summary.missing} missing (${summary.missing_values} missing values, ` +
                         `${summary.interpolated_values} interpolated)\n`);
  }
  if (unsigned) {
    process.stderr.write(`note: ${folder} is not signed: anyone who can write it can change it unseen ` +
                         "(give --trusted-key or $EDGEAE_TRUSTED_KEY to require a signature)\n");
  }
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`error: ${String(error.message).split("\n")[0]}\n`);
  process.exit(error instanceof EdgeError ? error.code : 1);
});
