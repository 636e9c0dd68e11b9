// Type declarations of wshub.js, the browser client of the `wshub.v1` protocol.
// Served at /wshub.d.ts beside /wshub.js; see the header of wshub.js for the behaviour.

/** A position in a channel's stream. */
export interface StreamPosition {
  /** One life of the stream; a new epoch means the earlier history is gone. */
  epoch: string;
  /** Offset of a publication; offsets increase by one per publication within an epoch. */
  offset: number;
}

/** A publication, live or recovered. */
export interface Publication<T = unknown> extends StreamPosition {
  channel: string;
  data: T;
}

/** A presence member: a connection subscribed to the channel. */
export interface Member {
  /** Opaque: "17" on one node, "17@node-a" across nodes. */
  conn: string;
  /** The token's `sub`, for connections that have one. */
  user?: string;
}

/** An Error from a command; `code` is the protocol's (400, 401, 403, 404, 405, 409, 429, 503; 4001/4002 for refused tokens) or 0
 *  for a failure on this side (`timeout`, `disconnected`, `client closed`). */
export interface CommandError extends Error {
  code: number;
}

export type State = "connecting" | "connected" | "disconnected";

export interface ClientOptions {
  /** Shortest wait before a reconnect, in ms (default 200). */
  minDelay?: number;
  /** Longest wait before a reconnect, in ms (default 20000). */
  maxDelay?: number;
  /**
   * After close code 1012 (the server is draining), reconnect after a random wait in
   * [0, restartJitter] ms instead of the backoff (default 2000), with recovery as always.
   */
  restartJitter?: number;
  /** Send a `ping` after this long without any frame from the server, in ms (default 25000; 0: never). */
  pingInterval?: number;
  /** Give the connection up when that ping gets no reply within this time, in ms (default 10000). */
  pongTimeout?: number;
  /** How long a command or a connection attempt may take, in ms (default 10000). */
  timeout?: number;
  /** The WebSocket class to use (default: the global one). */
  WebSocket?: { new (url: string, protocols?: string | string[]): WebSocket };
  /**
   * A JWT, or a function returning one (called on every connect and before `expires_in`
   * runs out, to refresh in place). Sent in a `connect` command before anything else.
   */
  token?: string | (() => string | Promise<string>);
}

export interface SubscribeOptions {
  /** Also receive `join` and `leave` events. */
  presenceEvents?: boolean;
  /** Start from this position (e.g. one saved earlier): recover what came after it. */
  since?: StreamPosition;
}

export interface Disconnected {
  code: number;
  reason: string;
  /** Milliseconds until the next attempt; undefined once closed. */
  delay?: number;
}

export interface Subscribed extends StreamPosition {
  /** True when `since` was sent and everything after it was recovered. */
  recovered: boolean;
}

export interface ClientEvents {
  state: State;
  /** `user`: the token's `sub`, when a token was sent. */
  connected: { user?: string };
  disconnected: Disconnected;
  /** A refused token (code 4001, or 4002 with a fixed token): reconnecting stopped. */
  error: CommandError;
}

export interface SubscriptionEvents<T = unknown> {
  publication: Publication<T>;
  join: Member;
  leave: Member;
  subscribed: Subscribed;
  /** After a reconnect, every missed publication has been delivered (`count` of them). */
  recovered: StreamPosition & { count: number };
  /** Publications were lost (another epoch, or older than the server's history): reload the state. */
  resync: StreamPosition;
  /** The server refused the subscription (it is then removed). */
  error: CommandError;
}

declare class Emitter<Events> {
  /** Calls `fn` on each `type` event; returns this, for chaining. */
  on<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): this;
  /** Removes a listener added with `on`. */
  off<K extends keyof Events>(type: K, fn: (value: Events[K]) => void): this;
}

export declare class Subscription<T = unknown> extends Emitter<SubscriptionEvents<T>> {
  readonly client: Client;
  readonly channel: string;
  readonly options: SubscribeOptions;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** Epoch of the last publication delivered (or of the subscribe reply). */
  readonly epoch: string | undefined;
  /** Offset of the last publication delivered (or of the subscribe reply). */
  readonly offset: number | undefined;
  /** Publishes `data` (any JSON value) to this channel. */
  publish(data: T): Promise<StreamPosition>;
  /** The connections subscribed to this channel. */
  presence(): Promise<{ count: number; members: Member[] }>;
  /** The kept publications: the newest `limit`, or those after `since`. */
  history(options?: {
    limit?: number;
    since?: StreamPosition;
  }): Promise<StreamPosition & { publications: Publication<T>[]; recovered?: boolean }>;
  /** Leaves the channel; never rejects. */
  unsubscribe(): Promise<void>;
}

export declare class Client extends Emitter<ClientEvents> {
  /** `url` defaults to ws(s)://<this page's host>/ws. */
  constructor(url?: string, options?: ClientOptions);
  constructor(options?: ClientOptions);
  readonly url: string;
  readonly options: Required<ClientOptions>;
  readonly state: State;
  /** The user the server confirmed in `connect` (with a `token`). */
  readonly user?: string;
  /** Connects, and keeps reconnecting until `close()`. */
  connect(): this;
  /** Closes and stops reconnecting; subscriptions are kept for a later `connect()`. */
  close(): void;
  /** Subscribes to `channel` (now, or once connected); throws if already subscribed. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions): Subscription<T>;
  getSubscription<T = unknown>(channel: string): Subscription<T> | undefined;
  /** Publishes `data` to `channel`, subscribed or not. */
  publish(channel: string, data: unknown): Promise<StreamPosition>;
  /** Resolves when the server answers a `ping` command. */
  ping(): Promise<{}>;
}
