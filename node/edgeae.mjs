// edgeae for JavaScript: what an app needs around an export's detector graph, with no numpy and no
// Python. Works the same in Node.js (onnxruntime-node) and in a browser (onnxruntime-web): the caller
// hands in the onnxruntime module and the files' bytes.
//
//   const exp = await openExport(ort, readFile)      // readFile(name) -> Uint8Array of a file of the export
//   await exp.checkGolden()                          // refuses an export this runtime computes wrong
//   const series = parseCsv(text, exp.columns, "data.csv", { missing: "skip", maxGap: 5 })
//   const result = await exp.score(series)           // {starts, scores, flags, missing}
//   summarize(result)                                // {windows, flagged, normal, missing}
//
// A missing value (an empty cell, NA, NaN, null, N/A, in any case) is refused, skipped or interpolated
// as `missing` says; a window holding one is reported as missing (score NaN, neither flagged nor
// normal) and never reaches onnxruntime.
// Errors are EdgeError(message, code) with edgeae's exit codes: 3 bad data, 4 integrity, 6 parity.

export class EdgeError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

const BAD_DATA = 3, INTEGRITY = 4, PARITY = 6;
const CHUNK = 256; // windows per run, as the Python runtime

function json(bytes, name) {
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (error) {
    throw new EdgeError(`${name}: not JSON (${error.message})`, INTEGRITY);
  }
}

// One float32 array of golden.bin, as golden.json indexes it (offset in float32 values, row-major shape).
function goldenArray(data, entry, where) {
  const count = entry.shape.reduce((a, b) => a * b, 1);
  if (!Number.isInteger(entry.offset) || entry.offset < 0 || entry.offset + count > data.length) {
    throw new EdgeError(`golden.json: ${where} lies outside golden.bin`, INTEGRITY);
  }
  return { values: data.subarray(entry.offset, entry.offset + count), shape: entry.shape };
}

// The worst error of `actual` against `reference`, in the units the network computes in (each
// feature times its scale), absolute and as a share of the reference's range.
function compare(reference, actual, scale) {
  const features = scale.length;
  let worst = 0, low = Infinity, high = -Infinity;
  for (let i = 0; i < reference.length; i++) {
    const s = Math.abs(scale[i % features]);
    const r = reference[i] * s;
    worst = Math.max(worst, Math.abs(reference[i] - actual[i]) * s);
    low = Math.min(low, r);
    high = Math.max(high, r);
  }
  const range = high > low ? high - low : Math.max(Math.abs(high), Math.abs(low), 1);
  return { maxAbs: worst, maxRelRange: worst / range };
}

export async function openExport(ort, readFile, precision = "fp32") {
  const manifest = json(await readFile("manifest.json"), "manifest.json");
  const graph = manifest?.detector?.graphs?.[precision];
  if (!graph) {
    const have = Object.keys(manifest?.detector?.graphs ?? {}).join(", ") || "none";
    throw new EdgeError(`this export has no ${precision} detector graph (it has: ${have}); export it again with edgeae`,
                        INTEGRITY);
  }
  const { timesteps, features } = manifest.window;
  const stride = manifest.window.stride ?? 1;
  const scale = Float64Array.from(manifest.preprocessing.scale);
  const columns = manifest.training?.data?.columns ?? null;
  const tolerance = manifest.variants.autoencoder[precision].tolerance;
  const session = await ort.InferenceSession.create(await readFile(graph.file));

  async function run(values, count) {
    const input = new ort.Tensor("float32", values, [count, timesteps, features]);
    const out = await session.run({ [session.inputNames[0]]: input });
    return { reconstruction: out.reconstruction.data, score: out.score.data, anomaly: out.anomaly.data };
  }

  return {
    manifest, timesteps, features, stride, columns, threshold: graph.threshold, file: graph.file,

    // Runs the detector graph on every golden input set and refuses, naming the error and the
    // tolerance, when this runtime misses Keras by more than the export allows.
    async checkGolden() {
      const index = json(await readFile("golden.json"), "golden.json");
      const raw = await readFile(index.data);
      if (raw.byteLength % 4) throw new EdgeError("golden.bin: not a whole number of float32 values", INTEGRITY);
      const data = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
      const worst = [];
      for (const [name, entry] of Object.entries(index.inputs)) {
        const x = goldenArray(data, entry, `inputs.${name}`);
        const keras = goldenArray(data, index.expected.autoencoder.keras[name], `expected.autoencoder.keras.${name}`);
        const out = await run(x.values, x.shape[0]);
        const e = compare(keras.values, out.reconstruction, scale);
        const within = (tolerance.abs == null || e.maxAbs <= tolerance.abs) &&
                       (tolerance.rel_range == null || e.maxRelRange <= tolerance.rel_range);
        if (!within) {
          const allowed = tolerance.abs != null ? `max abs ${tolerance.abs}` : `${tolerance.rel_range} of range`;
          throw new EdgeError(`golden check: ${graph.file} misses Keras here by ${e.maxAbs.toExponential(2)} ` +
                              `(${e.maxRelRange.toExponential(2)} of range) on the golden '${name}' windows; ` +
                              `allowed ${allowed}`, PARITY);
        }
        worst.push({ set: name, windows: x.shape[0], ...e });
      }
      return worst;
    },

    // Cuts a parsed series into windows as edgeae does (stride from the manifest) and scores them.
    async score(series) {
      const rows = series.rows;
      if (series.features !== features) {
        throw new EdgeError(`${series.source}: ${series.features} feature column(s), the model expects ${features}`,
                            BAD_DATA);
      }
      if (rows < timesteps) {
        throw new EdgeError(`${series.source} has ${rows} rows, fewer than one window of ${timesteps}`, BAD_DATA);
      }
      const starts = [];
      for (let s = 0; s + timesteps <= rows; s += stride) starts.push(s);
      const gapsBefore = new Int32Array(rows + 1); // rows holding a missing value, before each row
      for (let r = 0; r < rows; r++) {
        let gap = 0;
        for (let j = 0; j < features; j++) gap |= Number.isNaN(series.values[r * features + j]);
        gapsBefore[r + 1] = gapsBefore[r] + gap;
      }
      const missing = Uint8Array.from(starts, (s) => gapsBefore[s + timesteps] > gapsBefore[s]);
      const complete = starts.map((s, i) => i).filter((i) => !missing[i]); // only these reach the model
      const scores = new Float64Array(starts.length).fill(Number.NaN), flags = new Uint8Array(starts.length);
      const width = timesteps * features;
      for (let first = 0; first < complete.length; first += CHUNK) {
        const count = Math.min(CHUNK, complete.length - first);
        const batch = new Float32Array(count * width);
        for (let w = 0; w < count; w++) {
          const from = starts[complete[first + w]] * features;
          batch.set(series.values.subarray(from, from + width), w * width);
        }
        const out = await run(batch, count);
        for (let w = 0; w < count; w++) {
          scores[complete[first + w]] = out.score[w];
          flags[complete[first + w]] = out.anomaly[w];
        }
      }
      return { starts, scores, flags, missing };
    },
  };
}

// How many windows were flagged, normal and missing (a missing window is neither flagged nor normal).
export function summarize({ starts, flags, missing }) {
  let flagged = 0, gaps = 0;
  starts.forEach((_, i) => { gaps += missing[i]; flagged += !missing[i] && flags[i] ? 1 : 0; });
  return { windows: starts.length, flagged, normal: starts.length - flagged - gaps, missing: gaps };
}

// Cells that mean "no value here", compared lowercased (NA, NaN, nan, null, NULL, N/A, an empty cell), as
// edgeae's Python side reads them. Infinity is not missing: it is refused.
export const MISSING_CELLS = new Set(["", "na", "nan", "null", "n/a"]);
export const MISSING_CHOICES = ["skip", "refuse", "interpolate"];
export const DEFAULT_MISSING = "skip", DEFAULT_MAX_GAP = 5;
const SEPARATORS = [",", ";", "\t"]; // in the order a header line is searched for them
const FLOAT32_MAX = 3.4028234663852886e38;
const DECIMAL_COMMA = /^[+-]?\d+,\d+([eE][+-]?\d+)?$/;

// The column separator of a CSV, read from its header line: a comma, else a semicolon (as
// spreadsheets write where the comma is the decimal mark), else a tab; a comma for one column.
export function separator(headerLine) {
  return SEPARATORS.find((sep) => headerLine.includes(sep)) ?? ",";
}

// One line's cells: split on `sep`, with a cell that starts with a double quote read to its closing
// quote (a doubled quote inside is one quote), as Python's csv module reads a line.
function splitLine(line, sep) {
  if (!line.includes('"')) return line.split(sep);
  const cells = [];
  let cell = "", quoted = false, fresh = true;
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quoted) {
      if (ch === '"' && line[i + 1] === '"') { cell += '"'; i++; } else if (ch === '"') quoted = false; else cell += ch;
    } else if (ch === sep) {
      cells.push(cell); cell = ""; fresh = true; continue;
    } else if (ch === '"' && fresh) quoted = true; else cell += ch;
    fresh = false;
  }
  cells.push(cell);
  return cells;
}

// A number as Python's float() reads a CSV cell (ASCII digits, no underscores), or null for text.
function parseNumber(cell) {
  if (/^[+-]?(nan|inf|infinity)$/i.test(cell)) return Number.NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(cell)) return null;
  return Number(cell);
}

export function checkMissingOptions(missing, maxGap) {
  if (!MISSING_CHOICES.includes(missing)) {
    throw new EdgeError(`--missing must be skip, refuse or interpolate; got '${missing}'`, 2);
  }
  if (!Number.isInteger(maxGap) || maxGap < 0) {
    throw new EdgeError(`--max-gap must be a whole number of rows, at least 0, got '${maxGap}'`, 2);
  }
}

// Fills each column's runs of at most `maxGap` missing rows that have a value on both sides, on the
// line between those two values; a run at the start or end, or a longer one, stays missing.
// Returns how many values were filled.
export function interpolateGaps(values, rows, features, maxGap) {
  let filled = 0;
  for (let j = 0; j < features; j++) {
    let last = -1; // the row of the last value seen in this column
    for (let r = 0; r < rows; r++) {
      if (Number.isNaN(values[r * features + j])) continue;
      const gap = r - last - 1;
      if (last >= 0 && gap > 0 && gap <= maxGap) {
        const a = values[last * features + j], b = values[r * features + j];
        for (let k = 1; k <= gap; k++) values[(last + k) * features + j] = a + (b - a) * (k / (gap + 1));
        filled += gap;
      }
      last = r;
    }
  }
  return filled;
}

// The column indices of `wanted` (names, or else 0-based indices, as edgeae's Python side reads
// --columns), every column without it; a name the header holds twice, or one asked for twice, is refused.
function pickColumns(header, wanted, source) {
  if (!wanted) return header.map((_, i) => i);
  const first = new Map(), counts = new Map();
  header.forEach((name, i) => { if (!first.has(name)) first.set(name, i); counts.set(name, (counts.get(name) ?? 0) + 1); });
  const picked = wanted.map((name) => {
    if ((counts.get(name) ?? 0) > 1) {
      throw new EdgeError(`${source}: column name '${name}' appears ${counts.get(name)} times in the header`, BAD_DATA);
    }
    if (first.has(name)) return first.get(name);
    if (/^\d+$/.test(name) && Number(name) < header.length) return Number(name);
    throw new EdgeError(`${source}: no column '${name}' (columns: ${header.join(", ")})`, BAD_DATA);
  });
  picked.forEach((col, j) => {
    if (picked.indexOf(col) !== j) {
      throw new EdgeError(`${source}: column '${header[col]}' is used twice; name each feature column once`, BAD_DATA);
    }
  });
  return picked;
}

// The series with its columns in the model's order where they are the model's `trained` names in
// another order; refused where one of the model's columns would reach it as another feature (as
// edgeae's Python side). Names the model was not trained on pass as given.
export function matchTrained(series, trained) {
  const names = series.columns;
  if (!trained || names.join("\0") === trained.join("\0")) return series;
  const f = series.features;
  if (names.length === trained.length && [...names].sort().join("\0") === [...trained].sort().join("\0")) {
    const order = trained.map((name) => names.indexOf(name)), values = new Float64Array(series.values.length);
    for (let r = 0; r < series.rows; r++) order.forEach((from, j) => { values[r * f + j] = series.values[r * f + from]; });
    return { ...series, values, columns: [...trained] };
  }
  names.forEach((name, position) => {
    const at = trained.indexOf(name);
    if (at >= 0 && at !== position) {
      const listing = trained.slice(0, 10).join(", ") + (trained.length > 10 ? `, ... (${trained.length} in all)` : "");
      throw new EdgeError(`${series.source}: column '${name}' would be the model's feature ${position + 1}, but it ` +
                          `was trained as feature ${at + 1}; the model reads ${listing} in that order ` +
                          "(name them all, in any order)", BAD_DATA);
    }
  });
  return series;
}

// A CSV as edgeae reads it: with a header row, `columns` (the names the model was trained on, or
// the caller's) in that order, else every column; without one (`header: false`) every line is
// data and the columns are named by position, "1", "2", ... (1-based, as a user counts), so
// `columns` picks by position. A first line of numbers only is refused where a header is expected
// (`headerHint` ends that message). The separator (comma, semicolon or tab) is the first line's; a
// byte-order mark is dropped. Refuses what the Python runtime refuses, in the same words.
// Missing values become NaN and are then refused, kept (skip) or filled (interpolate: runs of at
// most `maxGap` rows inside a column) as `missing` says; `hint` ends refuse's message.
export function parseCsv(text, columns, source, { missing = DEFAULT_MISSING, maxGap = DEFAULT_MAX_GAP,
                                                  hint = "pass --missing skip or --missing interpolate",
                                                  header: headerRow = true,
                                                  headerHint = "pass --no-header for a file without one" } = {}) {
  checkMissingOptions(missing, maxGap);
  const raw = text.replace(/^\uFEFF/, "").split(/\r?\n/);
  const sep = separator(raw[0]);
  const lines = raw.map((line, i) => ({ line: i + 1, cells: line === "" ? [] : splitLine(line, sep) }));
  while (lines.length && lines[lines.length - 1].cells.every((c) => c.trim() === "")) lines.pop();
  if (!lines.length) throw new EdgeError(`${source}: the file is empty`, BAD_DATA);
  let header = lines[0].cells.map((h) => h.trim());
  if (!headerRow) header = header.map((_, i) => String(i + 1));
  else if (header.every((h) => parseNumber(h) !== null)) {
    throw new EdgeError(`${source}: row ${lines[0].line} holds numbers, expected a header row naming the columns ` +
                        `(${headerHint})`, BAD_DATA);
  } else if (lines.length === 1) throw new EdgeError(`${source}: a header row but no data rows`, BAD_DATA);
  const data = headerRow ? lines.slice(1) : lines;
  const picked = pickColumns(header, columns, source);
  const rows = data.length, features = picked.length;
  const values = new Float64Array(rows * features), counts = new Array(features).fill(0);
  data.forEach(({ line, cells }, i) => {
    if (cells.every((c) => c.trim() === "") && cells.length !== header.length) { // a blank line, not empty cells
      throw new EdgeError(`${source}: row ${line} is empty (a missing time step?)`, BAD_DATA);
    }
    if (cells.length !== header.length) {
      throw new EdgeError(`${source}: row ${line} has ${cells.length} cells, the header has ${header.length}`, BAD_DATA);
    }
    picked.forEach((col, j) => {
      const cell = cells[col].trim(), name = header[col];
      if (MISSING_CELLS.has(cell.toLowerCase())) {
        values[i * features + j] = Number.NaN;
        counts[j]++;
        return;
      }
      const number = parseNumber(cell);
      if (number === null && DECIMAL_COMMA.test(cell)) {
        throw new EdgeError(`${source}: row ${line}, column '${name}': '${cell}' has a decimal comma; edgeae reads ` +
                            `a point as the decimal mark ('${cell.replace(",", ".")}')`, BAD_DATA);
      }
      if (number === null) throw new EdgeError(`${source}: row ${line}, column '${name}': '${cell}' is not a number`, BAD_DATA);
      if (!Number.isFinite(number)) {
        throw new EdgeError(`${source}: row ${line}, column '${name}': '${cell}' is not a finite number`, BAD_DATA);
      }
      if (Math.abs(number) > FLOAT32_MAX) {
        throw new EdgeError(`${source}: row ${line}, column '${name}': ${cell} does not fit in float32`, BAD_DATA);
      }
      values[i * features + j] = number;
    });
  });
  const names = picked.map((c) => header[c]);
  const total = counts.reduce((a, b) => a + b, 0);
  if (total && missing === "refuse") {
    const per = names.map((name, j) => [name, counts[j]]).filter(([, n]) => n).map(([name, n]) => `${name}: ${n}`);
    const shown = per.slice(0, 10).join(", ") + (per.length > 10 ? `, ... (${per.length} columns in all)` : "");
    throw new EdgeError(`${source}: ${total} missing value${total === 1 ? "" : "s"} (${shown}); ${hint}`, BAD_DATA);
  }
  const filled = missing === "interpolate" ? interpolateGaps(values, rows, features, maxGap) : 0;
  return { values, rows, features, columns: names, source, separator: sep,
           missingValues: total, interpolatedValues: filled };
}
