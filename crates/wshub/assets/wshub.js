// wshub.js: a browser client for wshub's `wshub.v1` protocol (PROTOCOL.md).
// An ES module with no dependencies and no build step; the server serves it at /wshub.js
// and its TypeScript declarations at /wshub.d.ts.
//
//   import { Client } from "/wshub.js";
//   const client = new Client();                  // ws(s)://<this page's host>/ws
//   client.on("state", (state) => …);             // "connecting" | "connected" | "disconnected"
//   const room = client.subscribe("chat:lobby", { presenceEvents: true });
//   room.on("publication", ({ data, offset, epoch }) => …);
//   room.on("join", ({ conn }) => …).on("leave", ({ conn }) => …);
//   room.on("subscribed", ({ recovered }) => …);  // after every (re)subscribe
//   room.on("recovered", ({ count }) => …);       // after a reconnect: the missed ones are in
//   room.on("resync", () => …);                   // history lost: reload the state
//   room.on("error", (error) => …);               // the server refused the subscription
//   client.connect();
//   const { epoch, offset } = await room.publish({ text: "hi" });
//   const { count, members } = await room.presence();
//   const { publications } = await room.history({ limit: 50 });
//   await room.unsubscribe();
//   client.close();
//
// `new Client(url?, options?)` options (milliseconds):
//   minDelay 200, maxDelay 20000  reconnect backoff: each retry waits a random time between
//                                 minDelay and min(maxDelay, minDelay·2^attempt) (full jitter)
//   restartJitter 2000            after close 1012 (the node is draining): reconnect after a
//                                 random time in [0, restartJitter] instead, so a drained
//                                 node's clients reach the others spread out, not at once
//   pingInterval 25000            send a `ping` command after this long without any frame
//                                 (browsers answer the server's pings but never show them);
//                                 0 turns it off
//   pongTimeout 10000             no reply to that ping in time: the link is dead, reconnect
//   timeout 10000                 how long a command (or a connection attempt) may take
//   token                         a JWT, or a function (async or not) returning one: sent
//                                 in `connect` before anything else on every (re)connection;
//                                 a function is also called before `expires_in` runs out and
//                                 the token refreshed in place (`refresh`, no reconnect).
//                                 Close 4001 (refused) stops reconnecting and emits `error`;
//                                 4002 (expired) reconnects at once with a new token from
//                                 the function (a fixed token: as 4001). `client.user` is
//                                 the server's answer.
//   WebSocket                     the WebSocket class to use (tests, other runtimes)
//
// Commands return promises of the reply's `result`; an error reply rejects with an Error
// whose `code` is the protocol's (400, 403, 404, 409, …), and code 0 for what happened on
// this side: "timeout", "disconnected". Commands issued while disconnected wait for the
// connection (up to `timeout`).
//
// Reconnecting: after a dropped connection the client retries with backoff, at once when
// the browser comes back online or the page becomes visible again (after 1012: jitter). Every subscription is
// renewed with `since` = the position of the last publication it delivered (or of its
// subscribe reply), so what was published meanwhile arrives in order; a publication whose
// offset is not above the last one delivered is skipped, so none arrives twice. If the
// server could not recover (another epoch, or a gap older than its history), the
// subscription emits `resync` and carries on from the new position. So does a `resync`
// push: publications the server lost on the way (a gap its history could not fill).
//
// Events of a subscription, in order after each subscribe reply: `subscribed`
// ({epoch, offset, recovered}), then `resync` ({epoch, offset}) if recovery was asked and
// failed, then the recovered `publication`s ({channel, data, offset, epoch}), then
// `recovered` ({epoch, offset, count}) if recovery was asked and succeeded, then live ones.
// Client events: `state` (the new state), `connected` ({user}), `disconnected` ({code,
// reason, delay}: delay is the wait before the next attempt, undefined once closed),
// `error` (an Error with the close code 4001/4002, or a refused `refresh`).

const PROTOCOL = "wshub.v1";

const failure = (code, message) => Object.assign(new Error(message), { code });

const finish = (command, error, result) => {
  clearTimeout(command.timer);
  command.done(error, result);
};

/** `on`/`off` listeners; a listener that throws does not disturb the client. */
class Emitter {
  constructor() {
    this._listeners = {};
  }
  /** Calls `fn(value)` on each `type` event; returns this, for chaining. */
  on(type, fn) {
    (this._listeners[type] ||= new Set()).add(fn);
    return this;
  }
  /** Removes a listener added with `on`. */
  off(type, fn) {
    this._listeners[type]?.delete(fn);
    return this;
  }
  _emit(type, value) {
    for (const fn of this._listeners[type] || []) {
      try {
        fn.call(this, value);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/** One channel of a Client: made by `client.subscribe`, renewed on every reconnect. */
export class Subscription extends Emitter {
  constructor(client, channel, options = {}) {
    super();
    this.client = client;
    this.channel = channel;
    this.options = options;
    /** "subscribing" | "subscribed" | "unsubscribed" */
    this.state = "subscribing";
    /** Position of the last publication delivered (or of the subscribe reply). */
    this.epoch = options.since?.epoch;
    this.offset = options.since?.offset;
    this._early = null; // pushes that came before the subscribe reply
  }
  /** Publishes `data` (any JSON value) to this channel: resolves to {epoch, offset}. */
  publish(data) {
    return this.client.publish(this.channel, data);
  }
  /** Who is subscribed: resolves to {count, members: [{conn}]}. */
  presence() {
    return this.client._call({ cmd: "presence", channel: this.channel });
  }
  /** The kept publications: {limit} (the newest ones) or {since: {epoch, offset}}. */
  history(options = {}) {
    return this.client._call({ cmd: "history", channel: this.channel, ...options });
  }
  /** Leaves the channel; resolves once done (never rejects). */
  unsubscribe() {
    const client = this.client;
    if (client._subs.get(this.channel) !== this) return Promise.resolve();
    client._subs.delete(this.channel);
    this.state = "unsubscribed";
    return client.state === "connected"
      ? client._call({ cmd: "unsubscribe", channel: this.channel }).then(
          () => {},
          () => {},
        )
      : Promise.resolve();
  }
  _push(publication) {
    if (this.state === "subscribed") this._deliver(publication);
    else this._early?.push(publication);
  }
  _deliver(publication) {
    if (publication.resync) {
      // The server lost publications up to here: reload the state, carry on after it.
      const { epoch, offset } = publication.resync;
      if (epoch === this.epoch && offset <= this.offset) return;
      this.epoch = epoch;
      this.offset = offset;
      return this._emit("resync", { epoch, offset });
    }
    const { epoch, offset } = publication;
    if (epoch !== this.epoch) {
      // A new life of the stream: nothing is lost if it starts at 1.
      this.epoch = epoch;
      this.offset = offset - 1;
      if (offset !== 1) this._emit("resync", { epoch, offset: this.offset });
    }
    if (offset <= this.offset) return; // delivered already
    this.offset = offset;
    this._emit("publication", publication);
  }
}

/** A connection to a wshub server that keeps itself up and its subscriptions whole. */
export class Client extends Emitter {
  constructor(url, options) {
    super();
    if (url && typeof url === "object") [url, options] = [undefined, url];
    this.url = url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
    this.options = {
      minDelay: 200,
      maxDelay: 20000,
      restartJitter: 2000,
      pingInterval: 25000,
      pongTimeout: 10000,
      timeout: 10000,
      WebSocket: globalThis.WebSocket,
      ...options,
    };
    /** "connecting" | "connected" | "disconnected" */
    this.state = "disconnected";
    this._subs = new Map(); // channel → Subscription
    this._sent = new Map(); // id → command waiting for its reply
    this._waiting = []; // commands waiting for a connection
    this._id = 0;
    this._attempt = 0;
    this._ws = null;
    this._wake = () => {
      if (this._retry && (typeof document !== "object" || document.visibilityState !== "hidden")) {
        this._open();
      }
    };
  }

  /** Connects, and keeps reconnecting until `close()`. */
  connect() {
    if (!this._active) {
      this._active = true;
      this._listen("addEventListener");
      this._open();
    }
    return this;
  }

  /** Closes the connection and stops reconnecting; subscriptions stay, for `connect()`. */
  close() {
    this._active = false;
    this._listen("removeEventListener");
    if (this._ws) this._lost(this._ws, 1000, "closed by the client");
    clearTimeout(this._retry);
    this._retry = null;
    for (const command of this._waiting.splice(0)) finish(command, failure(0, "client closed"));
    this._setState("disconnected");
  }

  /** Subscribes to `channel`; options: {presenceEvents, since: {epoch, offset}}. */
  subscribe(channel, options) {
    if (this._subs.has(channel)) throw failure(409, `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, options);
    this._subs.set(channel, sub);
    if (this.state === "connected") this._subscribe(sub);
    return sub;
  }

  /** The subscription to `channel`, if any. */
  getSubscription(channel) {
    return this._subs.get(channel);
  }

  /** Publishes `data` to `channel` (subscribed or not): resolves to {epoch, offset}. */
  publish(channel, data) {
    return this._call({ cmd: "publish", channel, data });
  }

  /** Sends a `ping` command: resolves when the server answers. */
  ping() {
    return this._call({ cmd: "ping" });
  }

  _listen(method) {
    if (typeof globalThis[method] === "function") {
      globalThis[method]("online", this._wake);
      if (typeof document === "object") document[method]("visibilitychange", this._wake);
    }
  }

  _setState(state) {
    if (state !== this.state) {
      this.state = state;
      this._emit("state", state);
    }
  }

  _open() {
    clearTimeout(this._retry);
    this._retry = null;
    this._setState("connecting");
    let ws;
    try {
      ws = this._ws = new this.options.WebSocket(this.url, PROTOCOL);
    } catch (error) {
      this._ws = {};
      return this._lost(this._ws, 1006, String(error));
    }
    this._connecting = setTimeout(() => this._lost(ws, 1006, "connect timeout"), this.options.timeout);
    ws.onopen = () => {
      clearTimeout(this._connecting);
      if (ws.protocol !== PROTOCOL) return this._lost(ws, 1006, `the server does not speak ${PROTOCOL}`);
      this._received = Date.now();
      if (this.options.token == null) return this._ready(ws);
      this._authenticate(ws, "connect").then((ok) => ok && this._ready(ws));
    };
    ws.onmessage = (event) => this._frame(event.data);
    ws.onclose = (event) => this._lost(ws, event.code, event.reason);
  }

  _ready(ws) {
    this._attempt = 0;
    this._setState("connected");
    this._emit("connected", { user: this.user });
    for (const sub of this._subs.values()) this._subscribe(sub);
    for (const command of this._waiting.splice(0)) this._send(command);
    this._heartbeat(ws);
  }

  // `connect` (before anything else) or `refresh` (in place) with a token from the
  // `token` option; resolves to whether the server took it.
  async _authenticate(ws, cmd) {
    const { token: source, timeout } = this.options;
    let token;
    try {
      token = typeof source === "function" ? await source() : source;
    } catch (error) {
      this._emit("error", failure(0, `token: ${error}`));
      if (cmd === "connect") this._lost(ws, 1006, "no token");
      return false;
    }
    if (ws !== this._ws) return false;
    return new Promise((resolve) => {
      const entry = {
        command: { cmd, token },
        done: (error, result) => {
          if (error) {
            if (cmd === "refresh" && error.code) this._emit("error", error);
            return resolve(false); // a refused `connect` ends in a close (4001/4002)
          }
          if (result.user != null) this.user = result.user;
          clearTimeout(this._refresh);
          const left = result.expires_in;
          if (left != null && typeof source === "function") {
            const lead = Math.min(30, left / 5); // refresh before `exp`, no reconnect
            this._refresh = setTimeout(() => ws === this._ws && this._authenticate(ws, "refresh"), Math.max(1, left - lead) * 1000);
          }
          resolve(true);
        },
      };
      entry.timer = setTimeout(() => {
        this._sent.delete(entry.id);
        entry.done(failure(0, "timeout"));
        if (cmd === "connect") this._lost(ws, 1006, "connect timeout");
      }, timeout);
      this._send(entry);
    });
  }

  // The connection `ws` ended (or is given up): fail what waits on it, plan the next one.
  _lost(ws, code, reason) {
    if (ws !== this._ws) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {}
    clearTimeout(this._connecting);
    clearTimeout(this._ping);
    clearTimeout(this._refresh);
    for (const command of this._sent.values()) finish(command, failure(0, "disconnected"));
    this._sent.clear();
    for (const sub of this._subs.values()) sub.state = "subscribing";
    // 4001: the token is refused, retrying cannot help. 4002: it expired; a `token`
    // function gives a new one at once, a fixed token cannot.
    const renewable = code === 4002 && typeof this.options.token === "function";
    if (code === 4001 || (code === 4002 && !renewable)) {
      this._active = false;
      this._listen("removeEventListener");
      this._emit("error", failure(code, reason));
    }
    let delay;
    if (this._active) {
      const { minDelay, maxDelay, restartJitter } = this.options;
      if (renewable) delay = 0;
      // 1012: the node is draining; come back (to another one) spread out, not in a storm.
      else if (code === 1012) delay = Math.random() * restartJitter;
      else delay = minDelay + Math.random() * (Math.min(maxDelay, minDelay * 2 ** ++this._attempt) - minDelay);
      this._retry = setTimeout(() => this._open(), delay);
    }
    this._setState("disconnected");
    this._emit("disconnected", { code, reason, delay });
  }

  // Sends a `ping` when nothing arrived for `pingInterval`; gives up after `pongTimeout`.
  _heartbeat(ws) {
    const { pingInterval, pongTimeout } = this.options;
    const tick = () => {
      if (ws !== this._ws) return;
      const idle = Date.now() - this._received;
      if (idle < pingInterval) {
        this._ping = setTimeout(tick, pingInterval - idle);
        return;
      }
      this._command({ cmd: "ping" }, (error) => error && this._lost(ws, 1006, "no reply to ping"), pongTimeout);
      this._ping = setTimeout(tick, pingInterval);
    };
    if (pingInterval > 0) this._ping = setTimeout(tick, pingInterval);
  }

  _subscribe(sub) {
    sub.state = "subscribing";
    sub._early = [];
    const since = sub.epoch == null ? undefined : { epoch: sub.epoch, offset: sub.offset };
    const command = { cmd: "subscribe", channel: sub.channel, since };
    if (sub.options.presenceEvents) command.presence_events = true;
    this._command(
      command,
      (error, result) => {
        if (this._subs.get(sub.channel) !== sub) return; // unsubscribed meanwhile
        if (error) {
          if (error.code) {
            this._subs.delete(sub.channel);
            sub.state = "unsubscribed";
            sub._emit("error", error);
          }
          return; // code 0: disconnected, renewed on the next connection
        }
        const { epoch, offset, recovered = false, publications = [] } = result;
        const early = sub._early;
        sub._early = null;
        sub.state = "subscribed";
        if (!recovered) {
          sub.epoch = epoch;
          sub.offset = offset;
        }
        sub._emit("subscribed", { epoch, offset, recovered });
        if (since && !recovered) sub._emit("resync", { epoch, offset });
        for (const publication of publications) sub._deliver(publication);
        if (since && recovered) sub._emit("recovered", { epoch, offset, count: publications.length });
        for (const publication of early) sub._deliver(publication);
      },
      0,
    );
  }

  _call(command) {
    return new Promise((resolve, reject) =>
      this._command(command, (error, result) => (error ? reject(error) : resolve(result))),
    );
  }

  // Sends `command` now or once connected; `done(error, result)` gets its reply, or a
  // code 0 error after `timeout` ms (0: no timeout) or when the connection drops.
  _command(command, done, timeout = this.options.timeout) {
    const entry = { command, done };
    if (timeout > 0) {
      entry.timer = setTimeout(() => {
        this._sent.delete(entry.id);
        this._waiting = this._waiting.filter((other) => other !== entry);
        done(failure(0, "timeout"));
      }, timeout);
    }
    if (this.state === "connected") this._send(entry);
    else this._waiting.push(entry);
  }

  _send(entry) {
    entry.id = ++this._id;
    this._sent.set(entry.id, entry);
    this._ws.send(JSON.stringify({ id: entry.id, ...entry.command }));
  }

  _frame(text) {
    this._received = Date.now();
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return;
    }
    if ("id" in message) {
      const entry = this._sent.get(message.id);
      if (!entry) return;
      this._sent.delete(message.id);
      const { error, result } = message;
      finish(entry, error && failure(error.code, error.message), result);
      return;
    }
    const sub = this._subs.get(message.channel);
    if (!sub) return;
    if (message.join) sub._emit("join", message.join);
    else if (message.leave) sub._emit("leave", message.leave);
    else sub._push(message);
  }
}
