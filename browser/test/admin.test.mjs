// The live dashboard (/admin, crates/wshub/assets/admin.html) in headless Chromium against a
// real `wshub serve`, while wshub-bench drives wshub.v1 load (subscribers on one channel,
// publishers at a fixed rate): the page's numbers move and agree with GET /metrics, the
// channel shows in the top channels, a wrong key is refused on the form, and a phone-sized
// screen scrolls only down. Screenshots: target/browser/admin*.png (the refused key; the
// dashboard under load, wide and phone-sized, light and dark).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { ROOT, API_KEY, startServer, startBench, startProxy, launchBrowser } from "../lib/harness.mjs";

const SHOTS = `${ROOT}target/browser`;
const CHANNEL = "admin:bench";
const CONNS = 40;

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function openAdmin(options = {}, base = server.url) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  page.errors = []; // uncaught exceptions (a refused fetch logs to the console by itself)
  page.on("pageerror", (error) => page.errors.push(error.message));
  await page.goto(`${base}/admin`);
  return page;
}

async function signIn(page, key = API_KEY) {
  await page.fill("#key", key);
  await page.press("#key", "Enter");
}

/** A number the page shows (its data-value), null while it shows none. */
const shown = (page, id) =>
  page.$eval(`[data-testid="${id}"]`, (el) => (el.dataset.value ? Number(el.dataset.value) : null));

/** The time of the snapshot the page shows last. */
const shownAt = (page) => page.$eval('[data-testid="status"]', (el) => Number(el.dataset.at || 0));

/** Calls `check` until its result has `ok`, every 200 ms for at most `timeout` ms. */
async function eventually(what, check, timeout = 15_000) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await check();
    if (last.ok) return last;
    await sleep(200);
  }
  throw new Error(`${what}, still: ${JSON.stringify(last)}`);
}

/** The page shows the same connection count as /metrics (read just before and after). */
const connectionsAgree = (page, expect) => async () => {
  const before = (await server.metrics()).get("wshub_connections");
  const page_ = await shown(page, "connections");
  const after = (await server.metrics()).get("wshub_connections");
  return { ok: before === after && page_ === after && expect(after), page: page_, metrics: after };
};

/** A client that breaks the protocol (an unmasked frame): the server closes it with 1002. */
function breakProtocol(url) {
  const { port, hostname } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () =>
      socket.write(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      ),
    );
    socket.once("data", (head) => {
      if (!String(head).startsWith("HTTP/1.1 101")) reject(new Error(`no 101: ${head}`));
      socket.write(Buffer.from([0x81, 0x02, 0x68, 0x69])); // text "hi", not masked
    });
    socket.on("error", () => {});
    socket.on("close", resolve);
  });
}

test("a wrong key is refused on the form, the right one shows the dashboard", { timeout: 30_000 }, async () => {
  const page = await openAdmin();
  await page.waitForSelector('[data-testid="login"]:not([hidden])');
  await signIn(page, "not-the-key");
  await page.waitForSelector('[data-testid="login-error"]:not([hidden])');
  assert.match(await page.textContent('[data-testid="login-error"]'), /401.*wrong API key/);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, "a refused key is not kept");
  assert.equal(await page.isVisible("#dash"), false);
  await page.screenshot({ path: `${SHOTS}/admin-login.png` });

  await signIn(page);
  await page.waitForSelector('[data-testid="status"][data-state="live"]');
  assert.equal(await page.isVisible('[data-testid="login"]'), false);
  // The key survives a reload (sessionStorage), and the feed comes back by itself.
  await page.reload();
  await page.waitForSelector('[data-testid="status"][data-state="live"]');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test("the feed reconnects by itself after the network drops", { timeout: 30_000 }, async () => {
  const proxy = await startProxy(server.url);
  try {
    const page = await openAdmin({}, proxy.url);
    await signIn(page);
    await page.waitForSelector('[data-testid="status"][data-state="live"]');
    proxy.down = true;
    proxy.cut();
    await page.waitForSelector('[data-testid="status"][data-state="disconnected"]');
    const stale = await shownAt(page);
    proxy.down = false;
    await page.waitForSelector('[data-testid="status"][data-state="live"]', { timeout: 10_000 });
    await page.waitForFunction((at) => Number(document.querySelector("#status").dataset.at) > at, stale);
    assert.deepEqual(page.errors, []);
    await page.context().close();
  } finally {
    await proxy.close();
  }
});

test("under wshub-bench load the numbers move and match /metrics", { timeout: 90_000 }, async () => {
  const page = await openAdmin({ viewport: { width: 1200, height: 900 } });
  await signIn(page);
  await page.waitForSelector('[data-testid="status"][data-state="live"]');
  await eventually("connections before the load", connectionsAgree(page, (n) => n === 0));

  const wsUrl = `${server.url.replace(/^http/, "ws")}/ws`;
  const bench = startBench([
    "channel", "--url", wsUrl, "--conns", String(CONNS), "--senders", "4", "--rate", "40",
    "--size", "64", "--warmup", "1s", "--duration", "15s", "--drain", "1s",
    "--channel", CHANNEL, "--quiet", "--json",
  ]);
  let phone;
  try {
    // Connections: the page's figure is /metrics' while the load holds them.
    const agreed = await eventually("connections under load", connectionsAgree(page, (n) => n >= CONNS));
    assert.equal(agreed.page, CONNS);

    // The channel, with every subscriber, in the top channels; this node in the nodes.
    await page.waitForSelector(`[data-testid="channels"] tr[data-channel="${CHANNEL}"][data-subscribers="${CONNS}"]`);
    assert.equal(await page.textContent(`tr[data-channel="${CHANNEL}"] td`), CHANNEL);
    await page.waitForSelector(`[data-testid="nodes"] tr[data-connections="${CONNS}"]`);
    assert.match(await page.textContent('[data-testid="nodes"] tbody'), /this node/);

    // Rates: in (publish commands) and out (pushes to 40 subscribers, replies) above 0.
    const rates = await eventually("messages/s in and out", async () => {
      const r = { in: await shown(page, "rate-in"), out: await shown(page, "rate-out") };
      return { ok: r.in > 0 && r.out > r.in, ...r };
    });
    assert.ok(rates.out > rates.in, `out ${rates.out} > in ${rates.in}`);

    // Totals behind the rates are /metrics' counters: a snapshot made after one scrape and
    // shown before another lies between the two.
    const totals = async () => {
      const m = await server.metrics();
      return { in: m.get("wshub_messages_received_total"), out: m.get("wshub_messages_sent_total") };
    };
    const first = await totals();
    const since = await shownAt(page);
    // The snapshot in flight during the scrape may predate it; the one after cannot.
    await page.waitForFunction((at) => Number(document.querySelector("#status").dataset.at) >= at + 1.5, since);
    const onPage = { in: await shown(page, "total-in"), out: await shown(page, "total-out") };
    const last = await totals();
    assert.ok(first.in > 0 && first.in <= onPage.in && onPage.in <= last.in, `in: ${first.in} ≤ ${onPage.in} ≤ ${last.in}`);
    assert.ok(first.out <= onPage.out && onPage.out <= last.out, `out: ${first.out} ≤ ${onPage.out} ≤ ${last.out}`);

    // An error shows in the recent list, newest first.
    await breakProtocol(server.url);
    await page.waitForSelector('[data-testid="recent"] li[data-kind="error"]');
    assert.match(await page.textContent('[data-testid="recent"] li'), /1002/);

    // The chart moves: it gains points each second.
    const points = () => page.$eval('[data-testid="chart"]', (el) => Number(el.dataset.points));
    const pointsBefore = await points();
    await page.waitForFunction((n) => Number(document.querySelector("#chart").dataset.points) > n, pointsBefore);

    await page.emulateMedia({ colorScheme: "light" });
    await page.screenshot({ path: `${SHOTS}/admin.png`, fullPage: true });
    await page.emulateMedia({ colorScheme: "dark" });
    await page.screenshot({ path: `${SHOTS}/admin-dark.png`, fullPage: true });

    // A phone (390 × 844): one column, nothing wider than the screen.
    phone = await openAdmin({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    await signIn(phone);
    await phone.waitForSelector(`tr[data-channel="${CHANNEL}"]`);
    await phone.waitForFunction(() => Number(document.querySelector("#chart").dataset.points) > 1);
    const widths = await phone.evaluate(() => ({ scroll: document.documentElement.scrollWidth, inner: innerWidth }));
    assert.ok(widths.scroll <= widths.inner, `no horizontal scroll at 390 px: ${JSON.stringify(widths)}`);
    await phone.emulateMedia({ colorScheme: "light" });
    await phone.screenshot({ path: `${SHOTS}/admin-phone.png`, fullPage: true });
    await phone.emulateMedia({ colorScheme: "dark" });
    await phone.screenshot({ path: `${SHOTS}/admin-phone-dark.png`, fullPage: true });

    const result = await bench.done;
    assert.equal(result.code, 0, `wshub-bench failed:\n${result.stderr}\n${result.stdout}`);
    const report = JSON.parse(result.stdout);
    assert.equal(report.channel, CHANNEL);
    assert.equal(report.failures, 0, "every publication reached every subscriber");
  } finally {
    await bench.stop();
  }

  // The load is gone: the page follows /metrics back down, and the rates fall to 0.
  await eventually("connections after the load", connectionsAgree(page, (n) => n === 0));
  await eventually("rates after the load", async () => {
    const r = { in: await shown(page, "rate-in"), out: await shown(page, "rate-out") };
    return { ok: r.in === 0 && r.out === 0, ...r };
  });
  await page.waitForSelector('[data-testid="channels"] tr:not([data-channel])'); // "no channels"
  assert.deepEqual(page.errors, []);
  assert.deepEqual(phone.errors, []);
  await phone.context().close();
  await page.context().close();
});
