// wshub.js's own logic, in Node against a scripted fake WebSocket: recovery on reconnect
// (nothing lost, nothing twice), resync, command replies, backoff and dead-link detection.
// No server and no browser: these run in milliseconds.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { Client } from "../../crates/wshub/assets/wshub.js";

/** A fake `WebSocket` class whose instances the test drives by hand. */
function fakeSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url, protocol) {
      Object.assign(this, { url, asked: protocol, protocol: "", readyState: 0, sent: [] });
      sockets.push(this);
    }
    send(text) {
      assert.equal(this.readyState, 1, "send on an open socket only");
      this.sent.push(JSON.parse(text));
    }
    close() {
      this.readyState = 3;
    }
    // What the server does:
    open(protocol = "wshub.v1") {
      this.protocol = protocol;
      this.readyState = 1;
      this.onopen?.({});
    }
    frame(message) {
      this.onmessage?.({ data: JSON.stringify(message) });
    }
    reply(command, result) {
      this.frame({ id: command.id, result });
    }
    drop(code = 1006) {
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
    /** The last command sent with this `cmd`. */
    last(cmd) {
      return this.sent.findLast((command) => command.cmd === cmd);
    }
  }
  return { sockets, WebSocket: FakeWebSocket };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition, what = "condition", rounds = 400) {
  for (let i = 0; i < rounds; i++) {
    if (condition()) return;
    await sleep(5);
  }
  assert.fail(`timed out waiting for ${what}`);
}

const clients = [];
afterEach(() => clients.splice(0).forEach((client) => client.close())); // even after a failure

function setup(options = {}) {
  const { sockets, WebSocket } = fakeSockets();
  const client = new Client("ws://hub.test/ws", { WebSocket, minDelay: 1, maxDelay: 4, pingInterval: 0, ...options });
  clients.push(client);
  const states = [];
  client.on("state", (state) => states.push(state));
  return { client, sockets, states, socket: () => sockets.at(-1) };
}

const pub = (offset, epoch = "e1", channel = "room") => ({ channel, offset, epoch, data: { n: offset } });

test("recovers after a reconnect: in order, nothing twice", async () => {
  const { client, sockets, socket } = setup();
  const sub = client.subscribe("room", { presenceEvents: true });
  const got = [];
  const subscribed = [];
  sub.on("publication", (p) => got.push(p.offset));
  sub.on("subscribed", (s) => subscribed.push(s));
  sub.on("resync", () => assert.fail("no resync expected"));
  const recovered = [];
  sub.on("recovered", (r) => recovered.push(`${r.count} before ${got.length}`));
  client.connect();
  assert.equal(socket().asked, "wshub.v1");
  socket().open();
  assert.equal(client.state, "connected");
  const first = socket().last("subscribe");
  assert.deepEqual(first, { id: first.id, cmd: "subscribe", channel: "room", presence_events: true });
  socket().frame(pub(3)); // a push before the reply: held back until it is in
  socket().reply(first, { epoch: "e1", offset: 2 });
  socket().frame(pub(3)); // the same publication again: skipped
  socket().frame(pub(4));
  assert.deepEqual(got, [3, 4]);
  assert.deepEqual([sub.epoch, sub.offset], ["e1", 4]);

  socket().drop();
  assert.equal(client.state, "disconnected");
  await until(() => sockets.length === 2, "a reconnect");
  socket().open();
  const again = socket().last("subscribe");
  assert.deepEqual(again.since, { epoch: "e1", offset: 4 }, "resubscribes from the last publication seen");
  socket().frame(pub(7)); // live, ahead of the reply: held until the recovered ones are out
  socket().reply(again, {
    epoch: "e1",
    offset: 6,
    recovered: true,
    publications: [pub(4), pub(5), pub(6)], // 4 was seen already
  });
  socket().frame(pub(6)); // a duplicate: skipped
  socket().frame(pub(8));
  assert.deepEqual(got, [3, 4, 5, 6, 7, 8]);
  assert.deepEqual(
    subscribed.map((s) => s.recovered),
    [false, true],
  );
  assert.deepEqual(recovered, ["3 before 4"], "`recovered` once, after the recovered publications, before live ones");
  client.close();
  assert.equal(client.state, "disconnected");
});

test("resubscribes from the subscribe reply's position when nothing was seen", async () => {
  const { client, sockets, socket } = setup();
  const sub = client.subscribe("room");
  const got = [];
  sub.on("publication", (p) => got.push(p.offset));
  client.connect();
  socket().open();
  socket().reply(socket().last("subscribe"), { epoch: "e1", offset: 41 });
  socket().drop();
  await until(() => sockets.length === 2);
  socket().open();
  const again = socket().last("subscribe");
  assert.deepEqual(again.since, { epoch: "e1", offset: 41 });
  socket().reply(again, { epoch: "e1", offset: 42, recovered: true, publications: [pub(42)] });
  assert.deepEqual(got, [42]);
  client.close();
});

test("resync when the server cannot recover, then carries on in the new epoch", async () => {
  const { client, sockets, socket } = setup();
  const sub = client.subscribe("room", { since: { epoch: "old", offset: 9 } });
  const events = [];
  sub.on("publication", (p) => events.push(`pub ${p.epoch}/${p.offset}`));
  sub.on("resync", (r) => events.push(`resync ${r.epoch}/${r.offset}`));
  client.connect();
  socket().open();
  const command = socket().last("subscribe");
  assert.deepEqual(command.since, { epoch: "old", offset: 9 });
  socket().frame(pub(5, "new")); // before the reply, and not after its position: skipped
  socket().reply(command, { epoch: "new", offset: 5, recovered: false, publications: [] });
  socket().frame(pub(6, "new"));
  // The stream starts a new life (history expired) at offset 1: nothing lost, no resync.
  socket().frame(pub(1, "newer"));
  // A jump to another epoch in the middle: some were lost.
  socket().frame(pub(4, "newest"));
  assert.deepEqual(events, ["resync new/5", "pub new/6", "pub newer/1", "resync newest/3", "pub newest/4"]);
  assert.equal(sockets.length, 1);
  client.close();
});

test("a resync push (a gap the server could not fill) moves the position and emits resync", async () => {
  const { client, socket } = setup();
  const sub = client.subscribe("room");
  const events = [];
  sub.on("publication", (p) => events.push(`pub ${p.epoch}/${p.offset}`));
  sub.on("resync", (r) => events.push(`resync ${r.epoch}/${r.offset}`));
  client.connect();
  socket().open();
  socket().reply(socket().last("subscribe"), { epoch: "e1", offset: 2 });
  socket().frame(pub(3));
  socket().frame({ channel: "room", resync: { epoch: "e1", offset: 8 } });
  socket().frame(pub(7)); // covered by the resync: skipped
  socket().frame(pub(9));
  socket().frame({ channel: "room", resync: { epoch: "e1", offset: 9 } }); // nothing new: ignored
  socket().frame({ channel: "room", resync: { epoch: "e2", offset: 0 } }); // a new epoch from its start
  socket().frame(pub(1, "e2"));
  assert.deepEqual(events, ["pub e1/3", "resync e1/8", "pub e1/9", "resync e2/0", "pub e2/1"]);
  assert.deepEqual([sub.epoch, sub.offset], ["e2", 1]);
  client.close();
});

test("token: connect first, refresh in place before expires_in, 4002 reconnects with a new token, 4001 stops", async () => {
  let n = 0;
  const { client, sockets, socket } = setup({ token: async () => `t${++n}` });
  const errors = [];
  client.on("error", (error) => errors.push(error.code));
  const sub = client.subscribe("room");
  client.connect();
  socket().open();
  await until(() => socket().sent.length === 1, "connect");
  const connect = socket().last("connect");
  assert.deepEqual(connect, { id: connect.id, cmd: "connect", token: "t1" });
  assert.equal(client.state, "connecting", "not connected before the server took the token");
  assert.equal(socket().last("subscribe"), undefined, "nothing before connect");
  socket().reply(connect, { user: "alice", expires_in: 1 });
  await until(() => client.state === "connected", "connected");
  assert.equal(client.user, "alice");
  assert.ok(socket().last("subscribe"));
  // expires_in 1 s: refreshed at once (at least 1 s), on the same socket.
  await until(() => socket().last("refresh"), "a refresh", 300);
  const refresh = socket().last("refresh");
  assert.equal(refresh.token, "t2");
  socket().reply(refresh, { expires_in: 3600 });
  assert.equal(sockets.length, 1, "no reconnect");

  socket().drop(4002);
  await until(() => sockets.length === 2, "a reconnect");
  socket().open();
  await until(() => socket().last("connect"), "connect again");
  assert.equal(socket().last("connect").token, "t3");
  socket().drop(4001);
  await sleep(20);
  assert.equal(sockets.length, 2, "4001: no more attempts");
  assert.deepEqual(errors, [4001]);
  assert.equal(sub.state, "subscribing");
});

test("commands resolve by id, errors reject with the code, a drop rejects with code 0", async () => {
  const { client, socket } = setup();
  client.connect();
  const queued = client.publish("room", { a: 1 }); // before the socket is open: waits
  assert.equal(socket().sent.length, 0);
  client.subscribe("room");
  socket().open();
  assert.deepEqual(
    socket().sent.map((c) => c.cmd),
    ["subscribe", "publish"],
    "subscriptions first, then what waited",
  );
  const publish = socket().last("publish");
  assert.deepEqual(publish.data, { a: 1 });
  socket().reply(publish, { epoch: "e1", offset: 1 });
  assert.deepEqual(await queued, { epoch: "e1", offset: 1 });

  const refused = client.publish("bad room", 1);
  socket().frame({ id: socket().last("publish").id, error: { code: 400, message: "bad channel name" } });
  await assert.rejects(refused, (error) => error.code === 400 && error.message === "bad channel name");

  const sub = client.getSubscription("room");
  const presence = sub.presence();
  assert.deepEqual(socket().last("presence"), { id: socket().last("presence").id, cmd: "presence", channel: "room" });
  socket().drop();
  await assert.rejects(presence, (error) => error.code === 0 && error.message === "disconnected");
  client.close();
});

test("a refused subscription emits error and is removed; unsubscribe is clean", async () => {
  const { client, socket } = setup();
  client.connect();
  socket().open();
  const sub = client.subscribe("forbidden");
  const errors = [];
  sub.on("error", (error) => errors.push(error.code));
  socket().frame({ id: socket().last("subscribe").id, error: { code: 404, message: "unknown channel" } });
  assert.deepEqual(errors, [404]);
  assert.equal(client.getSubscription("forbidden"), undefined);
  assert.equal(sub.state, "unsubscribed");

  const room = client.subscribe("room");
  assert.throws(() => client.subscribe("room"), /already subscribed/);
  const got = [];
  room.on("publication", (p) => got.push(p.offset));
  const done = room.unsubscribe(); // before the subscribe reply
  const unsubscribe = socket().last("unsubscribe");
  assert.equal(unsubscribe.channel, "room");
  socket().reply(socket().last("subscribe"), { epoch: "e1", offset: 0 });
  socket().frame(pub(1));
  socket().reply(unsubscribe, {});
  await done;
  assert.deepEqual(got, []);
  assert.equal(client.getSubscription("room"), undefined);
  client.close();
});

test("backoff: full jitter between minDelay and a doubling cap, reset once connected", async () => {
  const { client, sockets, socket } = setup({ minDelay: 10, maxDelay: 50 });
  const delays = [];
  client.on("disconnected", ({ delay }) => delays.push(delay));
  client.connect();
  for (let i = 1; i <= 4; i++) {
    socket().drop();
    await until(() => sockets.length === i + 1);
  }
  socket().open();
  socket().drop();
  await until(() => sockets.length === 6);
  socket().open();
  client.close();
  const caps = [20, 40, 50, 50, 20];
  assert.equal(delays.length, 6, "one event per drop, and one for close()");
  delays.slice(0, 5).forEach((delay, i) => {
    assert.ok(delay >= 10 && delay <= caps[i], `delay ${i}: ${delay} in [10, ${caps[i]}]`);
  });
  assert.equal(delays[5], undefined, "no retry after close()");
});

test("close 1012 (a draining node): reconnect within restartJitter, not the backoff, and recover", async () => {
  const { client, sockets, socket } = setup({ minDelay: 60_000, maxDelay: 60_000, restartJitter: 30 });
  const sub = client.subscribe("room");
  const got = [];
  sub.on("publication", (p) => got.push(p.offset));
  const delays = [];
  client.on("disconnected", ({ code, delay }) => delays.push([code, delay]));
  client.connect();
  for (let round = 1; round <= 3; round++) {
    socket().open();
    const subscribe = socket().last("subscribe");
    assert.deepEqual(subscribe.since, round === 1 ? undefined : { epoch: "e1", offset: round - 1 });
    socket().reply(subscribe, { epoch: "e1", offset: round - 1, recovered: round > 1, publications: [] });
    socket().frame(pub(round));
    socket().drop(1012);
    await until(() => sockets.length === round + 1, "a reconnect well before minDelay");
  }
  for (const [code, delay] of delays) {
    assert.equal(code, 1012);
    assert.ok(delay >= 0 && delay <= 30, `delay ${delay} in [0, restartJitter]`);
  }
  assert.deepEqual(got, [1, 2, 3]);
  // Any other close still backs off.
  socket().drop(1001);
  assert.ok(delays.at(-1)[1] >= 60_000, "1001: the backoff");
  client.close();
});

test("a wrong subprotocol is not a connection", async () => {
  const { client, sockets, socket, states } = setup();
  client.connect();
  socket().open(""); // the server did not agree to wshub.v1
  assert.equal(client.state, "disconnected");
  await until(() => sockets.length === 2);
  client.close();
  assert.ok(!states.includes("connected"));
});

test("dead link: a ping after pingInterval of silence, no reply within pongTimeout → reconnect", async () => {
  const { client, sockets, socket } = setup({ pingInterval: 40, pongTimeout: 40 });
  const reasons = [];
  client.on("disconnected", ({ reason }) => reasons.push(reason));
  client.connect();
  socket().open();
  const first = socket();
  await until(() => first.last("ping"), "a ping");
  first.reply(first.last("ping"), {}); // answered: stays up
  await sleep(60);
  assert.equal(sockets.length, 1);
  await until(() => first.sent.filter((c) => c.cmd === "ping").length === 2, "a second ping");
  // No reply this time.
  await until(() => sockets.length === 2, "a reconnect after the ping timeout");
  assert.deepEqual(reasons, ["no reply to ping"]);
  assert.equal(first.readyState, 3, "the dead socket was closed");
  client.close();
});

test("frames keep the link alive without pings", async () => {
  const { client, socket } = setup({ pingInterval: 50, pongTimeout: 50 });
  client.connect();
  socket().open();
  const started = Date.now();
  while (Date.now() - started < 150) {
    socket().frame({ channel: "nobody", offset: 1, epoch: "e", data: null });
    await sleep(10);
  }
  assert.equal(socket().last("ping"), undefined);
  client.close();
});

test("reconnects at once when the browser comes back online or the page becomes visible", async () => {
  // Node has neither `window` events nor `document`: stand-ins for both.
  const windowEvents = new EventTarget();
  globalThis.addEventListener = windowEvents.addEventListener.bind(windowEvents);
  globalThis.removeEventListener = windowEvents.removeEventListener.bind(windowEvents);
  globalThis.document = Object.assign(new EventTarget(), { visibilityState: "hidden" });
  try {
    const { client, sockets, socket } = setup({ minDelay: 60_000, maxDelay: 60_000 });
    client.connect();
    socket().open();
    socket().drop();
    assert.equal(sockets.length, 1, "waiting 60 s before the next attempt");
    windowEvents.dispatchEvent(new Event("online"));
    assert.equal(sockets.length, 1, "not while the page is hidden");
    document.visibilityState = "visible";
    document.dispatchEvent(new Event("visibilitychange"));
    assert.equal(sockets.length, 2, "visible again: reconnects at once");
    socket().drop();
    windowEvents.dispatchEvent(new Event("online"));
    assert.equal(sockets.length, 3, "online again: reconnects at once");
    socket().open();
    windowEvents.dispatchEvent(new Event("online"));
    assert.equal(sockets.length, 3, "connected: nothing to do");
    client.close();
    socket().drop();
    windowEvents.dispatchEvent(new Event("online"));
    assert.equal(sockets.length, 3, "closed: stays closed");
  } finally {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
    delete globalThis.document;
  }
});

test("wshub.js is small: at most 5 kB minified and gzipped", async () => {
  const { execFileSync } = await import("node:child_process");
  const out = execFileSync(process.execPath, [new URL("../size.mjs", import.meta.url).pathname], { encoding: "utf8" });
  const gzipped = Number(/(\d+) minified\+gzipped/.exec(out)[1]);
  assert.ok(gzipped <= 5 * 1024, out);
});
