// The /docs page in headless Chromium: it loads from trackd alone (no other origin, no
// error in the console, none of it blocked by its Content-Security-Policy), a person's steps
// (authorize with a key, fill in the order, Execute) issue a number, the page shows the 201,
// and the number is then found by a lookup. Leaves a screenshot in OUT_DIR.
//
//   BASE=http://127.0.0.1:PORT KEY=... OUT_DIR=... PLAYWRIGHT_CORE=<dir> node docs.cjs
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const path = require("path");

const base = process.env.BASE;
const key = process.env.KEY;
const outDir = process.env.OUT_DIR;
const order = {
  origin_country_id: "MY",
  destination_country_id: "ID",
  weight: "1.234",
  customer_id: "de619854-b59b-425e-9db4-943979e1bd49",
  customer_name: "RedBox Logistics",
  customer_slug: "redbox-logistics",
};

function fail(msg) {
  console.error("docs.cjs: " + msg);
  process.exit(1);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox"],
  });
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
    page.on("console", (m) => {
      if (m.type() === "error") problems.push("console: " + m.text());
    });
    page.on("pageerror", (e) => problems.push("page error: " + e.message));
    page.on("request", (r) => {
      const u = r.url();
      if (!u.startsWith(base + "/") && !u.startsWith("data:")) problems.push("request elsewhere: " + u);
    });

    const resp = await page.goto(base + "/docs", { waitUntil: "load" });
    if (resp.status() !== 200) fail("/docs answered " + resp.status());
    if (!(resp.headers()["content-security-policy"] || "").includes("script-src 'self'"))
      fail("/docs has no Content-Security-Policy");

    const op = page.locator(".opblock-get", { has: page.locator('.opblock-summary-path[data-path="/api/next-tracking-number/"]') });
    await op.first().waitFor({ timeout: 15000 });

    // Authorize with the key, as a person would.
    await page.click("button.authorize");
    const modal = page.locator(".modal-ux");
    await modal.locator("input").first().fill(key);
    await modal.locator("button.authorize").first().click();
    await modal.locator("button.btn-done").first().click();

    await op.first().locator(".opblock-summary").click();
    // Country codes are a list to choose from (an enum); the rest are text fields.
    for (const [name, value] of Object.entries(order)) {
      const row = op.first().locator(`tr[data-param-name="${name}"]`);
      if ((await row.locator("select").count()) > 0) await row.locator("select").selectOption(value);
      else await row.locator("input").fill(value);
    }
    await op.first().locator("button.execute").click();
    const status = op.first().locator(".live-responses-table tr.response .response-col_status").first();
    await status.waitFor({ timeout: 15000 });
    const code = (await status.innerText()).trim();
    const body = await op.first().locator(".live-responses-table tr.response .response-col_description pre").first().innerText();
    await page.screenshot({ path: path.join(outDir, "docs.png"), fullPage: true });
    if (code !== "201") fail("the page shows " + code + ": " + body);
    const issued = JSON.parse(body);
    const number = issued.tracking_number;
    if (!/^MYID[0-9A-Z]{12}$/.test(number || "")) fail("not a tracking number: " + body);

    // The number the page issued is real: it has a record.
    let found = 0;
    for (let i = 0; i < 100 && found !== 200; i++) {
      const r = await fetch(base + "/api/tracking-numbers/" + number, { headers: { authorization: "Bearer " + key } });
      found = r.status;
      if (found !== 200) await new Promise((ok) => setTimeout(ok, 50));
    }
    if (found !== 200) fail("the number the page issued has no record: " + found);
    if (problems.length) fail(problems.join("\n"));
    console.log("docs.cjs: /docs issued " + number + " (201); screenshot " + path.join(outDir, "docs.png"));
  } finally {
    await browser.close();
  }
})().catch((e) => fail(e.stack || String(e)));
