// permessage-deflate with a real browser: Chromium offers it, `wshub serve --compression
// true` agrees, and raw WebSockets and wshub.js (channels, large and small messages) work
// through it unchanged.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, launchBrowser } from "../lib/harness.mjs";

let server;
let browser;

before(async () => {
  // Minimum size 64: most messages of the test are compressed, a few are not.
  server = await startServer(["--compression", "true", "--compression-min-size", "64"]);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("Chromium negotiates permessage-deflate and gets every message back intact", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(server.url);
  const result = await page.evaluate(async () => {
    const ws = new WebSocket(`ws://${location.host}/ws`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    // Chat mode: every message comes back to its sender, compressed by the server.
    // Under max_message_size (5120) each: the largest is about 3 KB of JSON.
    const sent = ["tiny", "x".repeat(100), JSON.stringify({ rows: Array.from({ length: 100 }, (_, i) => ({ i, text: "hello world" })) })];
    const received = [];
    const done = new Promise((resolve, reject) => {
      ws.onmessage = (event) => {
        received.push(event.data);
        if (received.length === sent.length) resolve();
      };
      ws.onclose = (event) => reject(new Error(`closed ${event.code} ${event.reason}`));
    });
    for (const text of sent) ws.send(text);
    await done;
    ws.onclose = null;
    ws.close();
    return { extensions: ws.extensions, same: received.every((text, i) => text === sent[i]), sizes: sent.map((s) => s.length) };
  });
  assert.match(result.extensions, /^permessage-deflate/);
  assert.ok(result.same, `echoes differ (sizes ${result.sizes})`);
  await page.close();
});

test("wshub.js channels work through compression", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(server.url);
  const got = await page.evaluate(async () => {
    const { Client } = await import("/wshub.js");
    const client = new Client().connect();
    const room = client.subscribe("chat:deflate");
    const seen = [];
    const all = new Promise((resolve) => {
      room.on("publication", ({ data }) => {
        seen.push(data);
        if (seen.length === 3) resolve();
      });
    });
    await new Promise((resolve) => room.on("subscribed", resolve));
    await room.publish({ text: "hi" });
    await room.publish({ text: "long ".repeat(500) });
    await room.publish({ list: Array.from({ length: 100 }, (_, i) => i) });
    await all;
    client.close?.();
    return seen;
  });
  assert.deepEqual(got, [{ text: "hi" }, { text: "long ".repeat(500) }, { list: Array.from({ length: 100 }, (_, i) => i) }]);
  await page.close();
});
