// The chat demo (crates/wshub/assets/home.html on /wshub.js) in headless Chromium against a
// real `wshub serve`: two people chat, presence follows them, and a page whose connection
// is cut gets everything published meanwhile after it reconnects, in order, exactly once.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { ROOT, startServer, startProxy, launchBrowser } from "../lib/harness.mjs";
import { openChat as openChatIn, say, texts, showsExactly } from "../lib/chat.mjs";

let server;
let browser;
let rooms = 0;
const uniqueRoom = () => `t${process.pid}-${Date.now() % 100000}-${++rooms}`;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

const openChat = (baseUrl, room, name) => openChatIn(browser, baseUrl, room, name);

async function waitForPeople(page, count) {
  await page.waitForFunction((n) => document.querySelectorAll("#people li").length === n, count, {
    timeout: 10_000,
  });
  assert.equal(await page.textContent("#count"), `(${count})`);
}

test("two pages chat in a room, and presence follows them", { timeout: 60_000 }, async () => {
  const room = uniqueRoom();
  const alice = await openChat(server.url, "lobby", "alice");
  // Alice joins the custom room through the form; Bob follows a link to it.
  await alice.fill("#room-name", room);
  await alice.press("#room-name", "Enter");
  await alice.waitForSelector(`#rooms li.current a[href="#${room}"]`);
  const bob = await openChat(server.url, room, "bob");

  await waitForPeople(alice, 2);
  await waitForPeople(bob, 2);

  await say(alice, "hi bob");
  await showsExactly(bob, ["hi bob"]);
  await say(bob, "hi alice");
  await showsExactly(alice, ["hi bob", "hi alice"]);
  await showsExactly(bob, ["hi bob", "hi alice"]);
  assert.deepEqual(
    await bob.$$eval("#messages .name", (nodes) => nodes.map((n) => n.textContent)),
    ["alice:", "bob:"],
  );

  // A message in another room: an unread badge, until alice opens that room.
  await server.publish("chat:rust", { name: "api", text: "meanwhile in #rust", at: Date.now() });
  await alice.waitForSelector('#rooms a[href="#rust"] + .unread');
  assert.equal(await alice.textContent('#rooms a[href="#rust"] + .unread'), "1");
  await alice.click('#rooms a[href="#rust"]');
  await alice.waitForSelector('#rooms li.current a[href="#rust"]');
  assert.ok((await texts(alice)).includes("meanwhile in #rust"));
  assert.equal(await alice.$('#rooms a[href="#rust"] + .unread'), null);
  await alice.click(`#rooms a[href="#${room}"]`);
  await showsExactly(alice, ["hi bob", "hi alice"]);

  // Bob closes his page: alice sees him leave.
  await bob.context().close();
  await waitForPeople(alice, 1);
  assert.deepEqual(alice.errors, []);
  await alice.context().close();
});

test("a page whose connection is cut gets what was published meanwhile, once, in order", { timeout: 60_000 }, async () => {
  const room = uniqueRoom();
  const channel = `chat:${room}`;
  const proxy = await startProxy(server.url);
  try {
    const alice = await openChat(server.url, room, "alice");
    const bob = await openChat(proxy.url, room, "bob"); // bob's network is the proxy
    await waitForPeople(alice, 2);
    await say(alice, "one");
    await showsExactly(bob, ["one"]);
    await bob.evaluate((name) => {
      // Retry only after 30 s: what brings bob back below is the browser's `online` event.
      Object.assign(window.chat.client.options, { minDelay: 30_000, maxDelay: 30_000 });
      window.recoveries = [];
      window.chat.rooms.get(name).sub.on("subscribed", ({ recovered }) => window.recoveries.push(recovered));
    }, room);

    // Bob's network goes away: the browser says offline, the connection dies without a
    // close frame, and reconnecting fails until the network is back.
    const cdp = await bob.context().newCDPSession(bob);
    const network = (offline) =>
      cdp.send("Network.emulateNetworkConditions", { offline, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    proxy.down = true;
    await network(true);
    proxy.cut();
    await bob.waitForFunction(() => window.chat.client.state !== "connected");
    await waitForPeople(alice, 1);

    // Meanwhile: messages from alice's page and from the HTTP API.
    await say(alice, "two");
    await say(alice, "three");
    await showsExactly(alice, ["one", "two", "three"]);
    await server.publish(channel, { name: "api", text: "four", at: Date.now() });
    await say(alice, "five");
    await showsExactly(alice, ["one", "two", "three", "four", "five"]);
    assert.deepEqual(await texts(bob), ["one"]);

    // Back online: the `online` event reconnects at once, whatever the backoff.
    proxy.down = false;
    await network(false);
    await bob.waitForSelector('#status[data-state="connected"]', { timeout: 5_000 });
    await showsExactly(bob, ["one", "two", "three", "four", "five"]);
    assert.deepEqual(await bob.evaluate(() => window.recoveries), [true]);
    await waitForPeople(alice, 2);
    await waitForPeople(bob, 2);

    // And the conversation goes on.
    await say(bob, "six");
    await showsExactly(alice, ["one", "two", "three", "four", "five", "six"]);
    await showsExactly(bob, ["one", "two", "three", "four", "five", "six"]);

    mkdirSync(`${ROOT}target/browser`, { recursive: true });
    await bob.screenshot({ path: `${ROOT}target/browser/demo.png` });
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
    await alice.context().close();
    await bob.context().close();
  } finally {
    await proxy.close();
  }
});

test("wshub.js notices a dead link by itself and recovers what it missed", { timeout: 60_000 }, async () => {
  const proxy = await startProxy(server.url);
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${proxy.url}/#lobby`);
    const channel = `news-${uniqueRoom()}`;
    await page.evaluate(async (channel) => {
      window.chat.client.close(); // the demo's own client stays out of the way
      const { Client } = await import("/wshub.js");
      const client = new Client({ pingInterval: 500, pongTimeout: 500 });
      window.probe = { client, got: [], reasons: [] };
      client.on("disconnected", ({ reason }) => window.probe.reasons.push(reason));
      const sub = client.subscribe(channel).on("publication", ({ data }) => window.probe.got.push(data));
      await new Promise((resolve) => sub.on("subscribed", resolve) && client.connect());
    }, channel);
    await server.publish(channel, 1);
    await page.waitForFunction(() => window.probe.got.length === 1);

    proxy.freeze(); // the link dies silently: no close, no error, nothing arrives
    await server.publish(channel, 2);
    await server.publish(channel, 3);
    await page.waitForFunction(() => window.probe.reasons.length > 0, null, { timeout: 5_000 });
    assert.deepEqual(await page.evaluate(() => window.probe.reasons), ["no reply to ping"]);
    await page.waitForFunction(() => window.probe.client.state === "connected", null, { timeout: 5_000 });
    await server.publish(channel, 4);
    await page.waitForFunction(() => window.probe.got.length >= 4);
    await page.waitForTimeout(200);
    assert.deepEqual(await page.evaluate(() => window.probe.got), [1, 2, 3, 4]);
    await context.close();
  } finally {
    await proxy.close();
  }
});

