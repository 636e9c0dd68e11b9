// Several nodes behind a real load balancer: three `wshub serve --broker redis://…` on one
// Redis, Debian's nginx proxying round-robin (no sticky sessions), the chat demo in
// Chromium. A node dies with SIGKILL; its page reconnects through nginx to another node
// and shows every message once, in order.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startCluster, launchBrowser } from "../lib/harness.mjs";
import { openChat as openChatIn, say, showsExactly } from "../lib/chat.mjs";

let cluster;
let nodes = [];
let nginx;
let browser;

before(async () => {
  cluster = await startCluster(["a", "b", "c"]);
  ({ nodes, nginx } = cluster);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

const openChat = (room, name) => openChatIn(browser, nginx.url, room, name);

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
  await showsExactly(alice, ["one", "two", "three"]); // published before "four" is
  await nodes[(bobsNode + 1) % 3].publish(`chat:${room}`, { name: "api", text: "four", at: Date.now() });
  await bob.waitForSelector('#status[data-state="connected"]', { timeout: 15_000 });
  await showsExactly(bob, ["one", "two", "three", "four"], 15_000);
  await say(bob, "five");
  await showsExactly(alice, ["one", "two", "three", "four", "five"]);
  await showsExactly(bob, ["one", "two", "three", "four", "five"]);
  assert.deepEqual(alice.errors, []);
  assert.deepEqual(bob.errors, []);
  await alice.context().close();
  await bob.context().close();
});
