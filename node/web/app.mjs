// The page: picks an export's files and a CSV, scores every window with onnxruntime-web, draws it.
import * as ort from "../node_modules/onnxruntime-web/dist/ort.min.mjs";

import { openExport, parseCsv, summarize } from "../edgeae.mjs";

ort.env.wasm.numThreads = 1;
const $ = (id) => document.getElementById(id);

// The score line (broken where windows are missing, which are shaded grey), the threshold and the flags.
function draw(canvas, starts, scores, flags, missing, threshold) {
  const g = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 40;
  const top = Math.max(threshold, ...scores.filter((s, i) => !missing[i])) * 1.1 || 1;
  const x = (i) => pad + (w - 2 * pad) * (starts.length > 1 ? i / (starts.length - 1) : 0.5);
  const y = (v) => h - pad - (h - 2 * pad) * (v / top);
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#888"; g.strokeRect(pad, pad, w - 2 * pad, h - 2 * pad);
  g.fillStyle = "#333"; g.font = "12px sans-serif";
  g.fillText("score per window (first row on the x axis)", pad, pad - 10);
  g.fillText(String(starts[0]), pad, h - pad + 15);
  g.fillText(String(starts[starts.length - 1]), w - pad - 20, h - pad + 15);
  const step = starts.length > 1 ? (w - 2 * pad) / (starts.length - 1) : 0;
  g.fillStyle = "rgba(128, 128, 128, 0.25)";
  missing.forEach((m, i) => { if (m) g.fillRect(x(i) - step / 2, pad, Math.max(step, 1), h - 2 * pad); });
  if (missing.some(Boolean)) { g.fillStyle = "#666"; g.fillText("grey: missing windows (not scored)", w / 2, pad - 10); }
  g.strokeStyle = "#1f77b4"; g.beginPath();
  scores.forEach((s, i) => {
    if (missing[i]) return;
    if (i && !missing[i - 1]) g.lineTo(x(i), y(s)); else g.moveTo(x(i), y(s));
  });
  g.stroke();
  g.strokeStyle = "#d62728"; g.setLineDash([6, 4]); g.beginPath();
  g.moveTo(pad, y(threshold)); g.lineTo(w - pad, y(threshold)); g.stroke(); g.setLineDash([]);
  g.fillStyle = "#d62728"; g.fillText(`threshold ${threshold.toPrecision(4)}`, w - pad - 120, y(threshold) - 6);
  flags.forEach((f, i) => { if (f && !missing[i]) { g.beginPath(); g.arc(x(i), y(scores[i]), 3, 0, 2 * Math.PI); g.fill(); } });
}

async function score() {
  $("error").textContent = ""; $("summary").textContent = "working...";
  window.edgeaeResult = undefined;
  try {
    const files = new Map([...$("export").files].map((f) => [f.name, f]));
    const readFile = async (name) => {
      const file = files.get(name);
      if (!file) throw new Error(`pick the export's ${name} too`);
      return new Uint8Array(await file.arrayBuffer());
    };
    const csv = $("csv").files[0];
    if (!csv) throw new Error("pick a CSV series");
    const exp = await openExport(ort, readFile, $("variant").value);
    const golden = await exp.checkGolden();
    const maxGap = /^\d+$/.test($("maxgap").value) ? Number($("maxgap").value) : $("maxgap").value;
    const header = !$("noheader").checked; // without one, the model's column names cannot be found: by position
    const series = parseCsv(await csv.text(), header ? exp.columns : null, csv.name, {
      missing: $("missing").value, maxGap, header,
      hint: "choose skip or interpolate under Missing values",
      headerHint: "tick 'no header row' for a file without one",
    });
    const result = await exp.score(series);
    const { starts, scores, flags, missing } = result;
    const count = summarize(result);
    const gaps = series.missingValues ? ` (${series.missingValues} missing values` +
      (series.interpolatedValues ? `, ${series.interpolatedValues} interpolated)` : ")") : "";
    $("summary").textContent = `${exp.file}: ${count.windows} windows, ${count.flagged} above the threshold ` +
      `${exp.threshold.toPrecision(6)}, ${count.normal} normal, ${count.missing} missing${gaps}; ` +
      `golden vectors checked (${golden.length} sets, worst ` +
      `${Math.max(...golden.map((g) => g.maxAbs)).toExponential(1)} from Keras)`;
    draw($("plot"), starts, Array.from(scores), Array.from(flags), Array.from(missing), exp.threshold);
    $("windows").innerHTML = "<tr><th>window start</th><th>score</th><th>anomaly</th></tr>" + starts.map((s, i) =>
      missing[i] ? `<tr class="missing"><td>${s}</td><td>missing</td><td></td></tr>`
        : `<tr class="${flags[i] ? "flag" : ""}"><td>${s}</td><td>${scores[i].toPrecision(8)}</td><td>${flags[i] ? "yes" : ""}</td></tr>`).join("");
    window.edgeaeResult = { window_start: starts, score: Array.from(scores, (v, i) => (missing[i] ? null : v)),
                            anomaly: Array.from(flags, (f, i) => (missing[i] ? null : Boolean(f))),
                            missing: Array.from(missing, Boolean), counts: count, threshold: exp.threshold };
  } catch (error) {
    $("summary").textContent = "";
    $("error").textContent = `error: ${error.message}`;
    window.edgeaeResult = { error: error.message };
  }
}

$("run").addEventListener("click", score);
