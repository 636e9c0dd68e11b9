// Users by JWT in Chromium: wshub.js with a `token` function against a real `wshub serve
// --jwt-hmac-secret …`. A token that lasts 2 s is refreshed in place before it runs out:
// the connection stays up (no reconnect) and publications keep arriving.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser } from "../lib/harness.mjs";
import { mint } from "../../scripts/mint-token.mjs";

const SECRET = "browser-test-secret-32-bytes-ok!";
let server;
let browser;

before(async () => {
  server = await startServer(["--jwt-hmac-secret", SECRET, "--allow-anonymous", "true"]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a short token is refreshed without a reconnect", { timeout: 60_000 }, async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  let minted = 0;
  await page.exposeFunction("mintToken", () => {
    minted += 1;
    return mint(SECRET, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 2 });
  });
  await page.goto(`${server.url}/#lobby`); // the demo page serves /wshub.js; its own client is anonymous
  await page.evaluate(async () => {
    window.chat.client.close();
    const { Client } = await import("/wshub.js");
    const client = new Client({ token: () => window.mintToken() });
    window.probe = { client, got: [], disconnects: 0, errors: [] };
    client.on("disconnected", () => window.probe.disconnects++);
    client.on("error", (error) => window.probe.errors.push(error.code));
    const sub = client.subscribe("secure").on("publication", ({ data }) => window.probe.got.push(data));
    await new Promise((resolve) => sub.on("subscribed", resolve) && client.connect());
  });
  assert.equal(await page.evaluate(() => window.probe.client.user), "alice");
  await server.publish("secure", 1);
  await page.waitForFunction(() => window.probe.got.length === 1);
  // Past the first token's exp (2 s): still connected, thanks to the refresh.
  await page.waitForTimeout(3500);
  await server.publish("secure", 2);
  await page.waitForFunction(() => window.probe.got.length === 2, null, { timeout: 5_000 });
  const probe = await page.evaluate(() => ({ ...window.probe, client: undefined, state: window.probe.client.state }));
  assert.equal(probe.state, "connected");
  assert.equal(probe.disconnects, 0, "no reconnect");
  assert.deepEqual(probe.errors, []);
  assert.ok(minted >= 2, `tokens minted: ${minted}`);
  await context.close();
});
