// Drives the page in headless Chromium, as a person would: picks the export's files and a CSV,
// clicks Score, and prints what the page computed (JSON); saves a screenshot.
//   node web/check_page.mjs URL EXPORT_DIR DATA.csv VARIANT SCREENSHOT.png [MISSING [MAX_GAP [no-header]]]
import { readdir } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const [url, folder, data, variant, screenshot, missing = "skip", maxGap = "5", header = ""] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.EDGEAE_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  const messages = [];
  page.on("console", (m) => messages.push(m.text()));
  page.on("pageerror", (e) => messages.push(String(e)));
  await page.goto(url);
  const files = (await readdir(folder)).filter((n) => /^(manifest\.json|golden\.(json|bin)|detector.*\.onnx)$/.test(n));
  await page.setInputFiles("#export", files.map((n) => path.join(folder, n)));
  await page.setInputFiles("#csv", data);
  await page.selectOption("#variant", variant);
  await page.selectOption("#missing", missing);
  await page.fill("#maxgap", maxGap);
  await page.setChecked("#noheader", header === "no-header");
  await page.click("#run");
  await page.waitForFunction(() => window.edgeaeResult !== undefined, null, { timeout: 60000 });
  const result = await page.evaluate(() => window.edgeaeResult);
  await page.screenshot({ path: screenshot, fullPage: false });
  process.stdout.write(JSON.stringify({ ...result, summary: await page.textContent("#summary"),
                                        shown: await page.textContent("#error"), console: messages }) + "\n");
} finally {
  await browser.close();
}
