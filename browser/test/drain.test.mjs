// A node taken out of service: two `wshub serve --broker redis://…` behind Debian's nginx
// (round-robin, no sticky sessions), wshub.js clients in Chromium spread over both. Node A
// is drained (POST /api/drain, drain_period 2 s) while the API publishes through node B:
// A's clients are closed with 1012, come back through nginx within their restartJitter,
// land on B, and every client has every publication once, in order. Node A exits 0.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startCluster, launchBrowser, API_KEY } from "../lib/harness.mjs";

let cluster;
let nodes = [];
let nginx;
let browser;

before(async () => {
  cluster = await startCluster(["a", "b"], ["--drain-period", "2s", "--drain-timeout", "2s"]);
  ({ nodes, nginx } = cluster);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
});

const CLIENTS = 8;

test("wshub.js drained off node A recovers on node B: nothing lost, nothing twice", { timeout: 90_000 }, async () => {
  const [a, b] = nodes;
  const channel = `drain-${process.pid}`;
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  // Not the home page: its chat demo would hold a connection of its own.
  await page.goto(`${nginx.url}/healthz`);
  const ws = `${nginx.url.replace("http:", "ws:")}/ws`;
  await page.evaluate(
    async ({ ws, channel, count }) => {
      const { Client } = await import("/wshub.js");
      window.runs = [];
      for (let i = 0; i < count; i++) {
        const client = new Client(ws, { restartJitter: 500 });
        const run = { client, offsets: [], closes: [], resyncs: 0 };
        client.on("disconnected", ({ code }) => run.closes.push(code));
        const sub = client.subscribe(channel);
        sub.on("publication", ({ offset }) => run.offsets.push(offset));
        sub.on("resync", () => run.resyncs++);
        run.sub = sub;
        client.connect();
        window.runs.push(run);
      }
    },
    { ws, channel, count: CLIENTS },
  );
  const allSubscribed = () =>
    page.waitForFunction(() => window.runs.every((r) => r.client.state === "connected" && r.sub.state === "subscribed"), null, {
      timeout: 20_000,
    });
  await allSubscribed();
  const onA = (await a.stats()).connections;
  assert.ok(onA > 0 && onA < CLIENTS, `nginx spread the clients: ${onA} of ${CLIENTS} on node A`);

  // A publisher through node B for the whole drain: every acknowledged offset must arrive.
  const acked = [];
  let publishing = true;
  const publisher = (async () => {
    while (publishing) {
      acked.push((await b.publish(channel, { n: acked.length + 1 })).offset);
      await new Promise((resolve) => setTimeout(resolve, 40));
    }
  })();
  try {
    await new Promise((resolve) => setTimeout(resolve, 300));
    const drained = await fetch(`${a.url}/api/drain`, { method: "POST", headers: { authorization: `Bearer ${API_KEY}` } });
    assert.equal(drained.status, 202);
    assert.equal((await drained.json()).connections, onA);
    const ready = await fetch(`${a.url}/readyz`);
    assert.equal(ready.status, 503);
    assert.deepEqual(await ready.json(), { status: "draining" });

    assert.equal(await a.exited, 0, "node A exits 0 once its last client is gone");
    await allSubscribed();
    // A connection that was refused on A may still be finishing: wait for the count.
    for (let i = 0; (await b.stats()).connections !== CLIENTS; i++) {
      assert.ok(i < 100, `everyone is on node B now: ${(await b.stats()).connections}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
  } finally {
    publishing = false;
    await publisher;
  }

  const last = acked.at(-1);
  assert.deepEqual(acked, Array.from({ length: last }, (_, i) => i + 1), "the API's offsets, one by one");
  await page.waitForFunction((last) => window.runs.every((r) => r.offsets.at(-1) === last), last, { timeout: 10_000 });
  await page.waitForTimeout(300); // nothing more trickles in (no duplicates)
  const runs = await page.evaluate(() => window.runs.map(({ offsets, closes, resyncs }) => ({ offsets, closes, resyncs })));
  const expected = Array.from({ length: last }, (_, i) => i + 1);
  for (const [i, run] of runs.entries()) {
    assert.deepEqual(run.offsets, expected, `client ${i}: every publication once, in order`);
    assert.equal(run.resyncs, 0, `client ${i}: recovered, no resync`);
  }
  const restarted = runs.filter((run) => run.closes.includes(1012)).length;
  assert.equal(restarted, onA, "node A's clients were closed with 1012");
  assert.deepEqual(errors, []);
});
