// Runs one ONNX file on onnxruntime-web's WebAssembly backend, as a browser or a Node.js app would.
// Usage: node run_onnx_wasm.mjs MODEL.onnx INPUT.f32 d0,d1,d2 OUTPUT.f32
// INPUT.f32 and OUTPUT.f32 hold raw little-endian float32 values; the output's dims go to stdout as JSON.
import { readFile, writeFile } from "node:fs/promises";
import * as ort from "onnxruntime-web";

const [model, input, dims, output] = process.argv.slice(2);
ort.env.wasm.numThreads = 1;
ort.env.logLevel = "error";
try {
  const session = await ort.InferenceSession.create(await readFile(model), { executionProviders: ["wasm"] });
  const raw = await readFile(input);
  const shape = dims.split(",").map(Number);
  const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
  const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", data, shape) };
  const result = (await session.run(feeds))[session.outputNames[0]];
  const out = result.data;
  await writeFile(output, Buffer.from(out.buffer, out.byteOffset, out.byteLength));
  process.stdout.write(JSON.stringify({ dims: result.dims, type: result.type }) + "\n");
} catch (error) {
  process.stderr.write(String(error && error.message ? error.message : error).split("\n")[0] + "\n");
  process.exit(1);
}
