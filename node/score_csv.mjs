// Score a CSV series with an edgeae export in Node.js: the detector graph on onnxruntime-node.
//
//   node node/score_csv.mjs EXPORT_DIR DATA.csv [--variant fp32|fp16|int8] [--json]
//
// Checks the export's golden vectors first (exit 6 if this runtime misses them), then prints one
// line per window: its first row (0-based), its score and its flag (CSV, or one JSON object).
// Bad data exits 3 with one line, as `edgeae score` does.
import { readFile } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-node";

import { EdgeError, openExport, parseCsv } from "./edgeae.mjs";

async function main(argv) {
  const flags = new Set(argv.filter((a) => a === "--json"));
  const variantAt = argv.indexOf("--variant");
  const variant = variantAt >= 0 ? argv[variantAt + 1] : "fp32";
  const [folder, data] = argv.filter((a, i) => !a.startsWith("--") && (variantAt < 0 || i !== variantAt + 1));
  if (!folder || !data || !variant) {
    throw new EdgeError("usage: node score_csv.mjs EXPORT_DIR DATA.csv [--variant fp32|fp16|int8] [--json]", 2);
  }
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
  const series = parseCsv(text, exp.columns, path.basename(data));
  const { starts, scores, flags: anomaly } = await exp.score(series);
  if (flags.has("--json")) {
    process.stdout.write(JSON.stringify({
      file: exp.file, threshold: exp.threshold, golden, window_start: starts,
      score: Array.from(scores), anomaly: Array.from(anomaly, Boolean),
    }) + "\n");
  } else {
    process.stdout.write("window_start,score,anomaly\n");
    starts.forEach((s, i) => process.stdout.write(`${s},${scores[i]},${anomaly[i]}\n`));
  }
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(`error: ${String(error.message).split("\n")[0]}\n`);
  process.exit(error instanceof EdgeError ? error.code : 1);
});
