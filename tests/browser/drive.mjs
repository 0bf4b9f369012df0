// Drive one page in headless Chromium for the Python tests (tests/browser_page.py), so the report viewer is tested
// as a browser runs it: `node drive.mjs PLAN.json` prints one JSON object {results, errors, console}.
//
// PLAN: {"url": "file:///...", "steps": [STEP, ...]} where a STEP is one of
//   {"wait": "JS expression"}          until it is truthy (re-checked on every DOM mutation, never on a timer)
//   {"eval": "JS expression"}          its value (awaited if a promise) is appended to results
//   {"goto": "URL"}                    navigate (a new hash on the same page fires hashchange)
//   {"select": [css, value]}           set a <select>'s value and fire change
//   {"type": [css, text]}              set an <input>'s value and fire input
//   {"click": css}                     click the element
//   {"screenshot": path, "full": bool} PNG of the viewport (or the full page)
//
// Chromium is the one @sparticuz/chromium ships inside its npm package (no system browser needed); the flags keep it
// off the network and out of the user's profile: a fresh --user-data-dir per run, removed afterwards.
import chromium from "@sparticuz/chromium";
import puppeteer from "puppeteer-core";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
const profile = mkdtempSync(join(tmpdir(), "ptst-chromium-"));
const out = { results: [], errors: [], console: [] };
let browser;
try {
  browser = await puppeteer.launch({
    executablePath: await chromium.executablePath(),
    headless: true,
    userDataDir: profile,
    defaultViewport: plan.viewport || { width: 1280, height: 900 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--single-process", "--no-zygote"],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => out.errors.push(String(e && e.message ? e.message : e)));
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on("request", (r) => { if (!r.url().startsWith("file:") && !r.url().startsWith("data:")) out.errors.push(`network: ${r.url()}`); });
  await page.goto(plan.url, { waitUntil: "load", timeout: 120000 });
  for (const step of plan.steps || []) {
    if (step.wait) await page.waitForFunction(step.wait, { polling: "mutation", timeout: 60000 });
    else if (step.eval) out.results.push(await page.evaluate(step.eval));
    else if (step.goto) await page.evaluate((u) => { location.href = u; }, step.goto);
    else if (step.select) await page.select(step.select[0], step.select[1]);
    else if (step.type) {
      await page.$eval(step.type[0], (e, v) => { e.value = v; e.dispatchEvent(new Event("input", { bubbles: true })); },
                       step.type[1]);
    } else if (step.click) await page.click(step.click);
    else if (step.screenshot) await page.screenshot({ path: step.screenshot, fullPage: !!step.full });
    else throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
} catch (e) {
  out.errors.push(`driver: ${e && e.stack ? e.stack : e}`);
} finally {
  if (browser) await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(out) + "\n");
