// Several nodes behind a real load balancer: three `wshub serve --broker redis://…` on one
// Redis, Debian's nginx proxying round-robin (no sticky sessions), the chat demo in
// Chromium. A node dies with SIGKILL; its page reconnects through nginx to another node
// and shows every message once, in order.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startServer, startRedis, startNginx, launchBrowser } from "../lib/harness.mjs";

let redis;
let nodes = [];
let nginx;
let browser;

before(async () => {
  redis = await startRedis();
  for (const name of ["a", "b", "c"]) {
    nodes.push(await startServer(["--broker", redis.url, "--node-name", name, "--presence-ttl", "3s"]));
  }
  nginx = await startNginx(nodes.map((node) => node.url));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await nginx?.stop();
  for (const node of nodes) await node.stop();
  await redis?.stop();
});

async function openChat(room, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  page.errors = errors;
  await page.goto(`${nginx.url}/#${room}`);
  await page.fill("#name", name);
  await page.waitForSelector('#status[data-state="connected"]');
  await page.waitForSelector(`#rooms li.current a[href="#${room}"]`);
  return page;
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

const texts = (page) => page.$$eval("#messages .text", (nodes) => nodes.map((n) => n.textContent));

async function showsExactly(page, expected) {
  try {
    await page.waitForFunction(
      (want) => JSON.stringify([...document.querySelectorAll("#messages .text")].map((n) => n.textContent)) === want,
      JSON.stringify(expected),
      { timeout: 15_000 },
    );
  } catch {
    assert.deepEqual(await texts(page), expected);
  }
  await page.waitForTimeout(300); // nothing more trickles in (no duplicates)
  assert.deepEqual(await texts(page), expected);
}

const connections = () => Promise.all(nodes.map(async (node) => (await node.stats()).connections));

test("the chat demo through nginx on three nodes survives losing one", { timeout: 90_000 }, async () => {
  const room = `lb-${process.pid}`;
  const alice = await openChat(room, "alice");
  const before = await connections();
  const bob = await openChat(room, "bob");
  const afterBob = await connections();
  const bobsNode = afterBob.findIndex((n, i) => n > before[i]);
  assert.ok(bobsNode >= 0, `bob's connection is on a node: ${before} → ${afterBob}`);

  await say(alice, "one");
  await showsExactly(bob, ["one"]);
  await say(bob, "two");
  await showsExactly(alice, ["one", "two"]);

  // Bob's node dies without a word; what is said meanwhile reaches him after he is back.
  await nodes[bobsNode].stop("SIGKILL");
  await bob.waitForFunction(() => window.chat.client.state !== "connected");
  await say(alice, "three");
  await nodes[(bobsNode + 1) % 3].publish(`chat:${room}`, { name: "api", text: "four", at: Date.now() });
  await bob.waitForSelector('#status[data-state="connected"]', { timeout: 15_000 });
  await showsExactly(bob, ["one", "two", "three", "four"]);
  await say(bob, "five");
  await showsExactly(alice, ["one", "two", "three", "four", "five"]);
  await showsExactly(bob, ["one", "two", "three", "four", "five"]);
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  await alice.context().close();
  await bob.context().close();
});
