// edgeae for JavaScript: what an app needs around an export's detector graph, with no numpy and no
// Python. Works the same in Node.js (onnxruntime-node) and in a browser (onnxruntime-web): the caller
// hands in the onnxruntime module and the files' bytes.
//
//   const exp = await openExport(ort, readFile)      // readFile(name) -> Uint8Array of a file of the export
//   await exp.checkGolden()                          // refuses an export this runtime computes wrong
//   const series = parseCsv(text, exp.columns, "data.csv")
//   const result = await exp.score(series)           // {starts, scores, flags}
//
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
      const scores = new Float64Array(starts.length), flags = new Uint8Array(starts.length);
      const width = timesteps * features;
      for (let first = 0; first < starts.length; first += CHUNK) {
        const count = Math.min(CHUNK, starts.length - first);
        const batch = new Float32Array(count * width);
        for (let w = 0; w < count; w++) {
          const from = starts[first + w] * features;
          batch.set(series.values.subarray(from, from + width), w * width);
        }
        const out = await run(batch, count);
        scores.set(out.score, first);
        flags.set(out.anomaly, first);
      }
      return { starts, scores, flags };
    },
  };
}

// A number as Python's float() reads a CSV cell (ASCII digits, no underscores), or null for text.
function parseNumber(cell) {
  if (/^[+-]?(nan|inf|infinity)$/i.test(cell)) return Number.NaN;
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(cell)) return null;
  return Number(cell);
}

// A CSV with a header row, as edgeae reads it: `columns` (the names the model was trained on) in
// that order, else every column. Refuses what the Python runtime refuses, in the same words.
export function parseCsv(text, columns, source) {
  const lines = text.replace(/^\uFEFF/, "").split(/\r?\n/).map((line, i) => ({ line: i + 1, cells: line.split(",") }));
  while (lines.length && lines[lines.length - 1].cells.every((c) => c.trim() === "")) lines.pop();
  if (!lines.length) throw new EdgeError(`${source}: the file is empty`, BAD_DATA);
  const header = lines[0].cells.map((h) => h.trim());
  if (lines.length === 1) throw new EdgeError(`${source}: a header row but no data rows`, BAD_DATA);
  const picked = (columns ?? header).map((name) => {
    const at = header.indexOf(name);
    if (at < 0) throw new EdgeError(`${source}: no column '${name}' (columns: ${header.join(", ")})`, BAD_DATA);
    return at;
  });
  const values = new Float32Array((lines.length - 1) * picked.length);
  lines.slice(1).forEach(({ line, cells }, i) => {
    if (cells.every((c) => c.trim() === "")) throw new EdgeError(`${source}: row ${line} is empty (a missing time step?)`, BAD_DATA);
    if (cells.length !== header.length) {
      throw new EdgeError(`${source}: row ${line} has ${cells.length} cells, the header has ${header.length}`, BAD_DATA);
    }
    picked.forEach((col, j) => {
      const cell = cells[col].trim(), name = header[col];
      if (cell === "") throw new EdgeError(`${source}: row ${line}, column '${name}': missing value`, BAD_DATA);
      const number = parseNumber(cell);
      if (number === null) throw new EdgeError(`${source}: row ${line}, column '${name}': '${cell}' is not a number`, BAD_DATA);
      if (!Number.isFinite(number)) {
        throw new EdgeError(`${source}: row ${line}, column '${name}': '${cell}' is not a finite number`, BAD_DATA);
      }
      if (Math.abs(number) > 3.4028234663852886e38) {
        throw new EdgeError(`${source}: row ${line}, column '${name}': ${cell} does not fit in float32`, BAD_DATA);
      }
      values[i * picked.length + j] = number;
    });
  });
  return { values, rows: lines.length - 1, features: picked.length, columns: picked.map((c) => header[c]), source };
}
