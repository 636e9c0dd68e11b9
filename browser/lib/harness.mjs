// Shared by the browser tests: a real `wshub serve` on a free port, and Debian's Chromium.
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

/** The repository's root. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const API_KEY = "test";
const BIN = process.env.WSHUB_BIN || `${ROOT}target/release/wshub`;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/**
 * Starts `wshub serve --bind 127.0.0.1:0 --api-key test` (building the release binary if
 * it is missing) and resolves once it logs `wshub listening on http://ADDR`.
 */
export async function startServer(args = []) {
  if (!existsSync(BIN)) {
    execFileSync("cargo", ["build", "--release", "-p", "wshub-server"], { cwd: ROOT, stdio: "inherit" });
  }
  const child = spawn(BIN, ["serve", "--bind", "127.0.0.1:0", "--api-key", API_KEY, ...args], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, NO_COLOR: "1" },
  });
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" line in 10 s:\n${log}`)), 10_000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log = (log + chunk).slice(-20_000); // keep reading, so the server never blocks on it
      const found = /wshub listening on (http:\/\/[^\s\x1b]+)/.exec(log);
      if (found) {
        clearTimeout(timer);
        resolve(found[1]);
      }
    });
    child.on("exit", (code) => reject(new Error(`wshub exited (${code}):\n${log}`)));
  });
  return {
    url,
    log: () => log,
    /** `POST /api/publish`: resolves to {epoch, offset}. */
    async publish(channel, data) {
      const response = await fetch(`${url}/api/publish`, {
        method: "POST",
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ channel, data }),
      });
      if (!response.ok) throw new Error(`publish: ${response.status} ${await response.text()}`);
      return response.json();
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      await exited;
    },
  };
}

/** Headless Chromium (Debian's, `apt-get install chromium`). */
export function launchBrowser() {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM)`);
  }
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

/**
 * A TCP proxy in front of the server, to break the network under a page: `cut()` ends every
 * connection at once (no close frame: what a dropped Wi-Fi looks like), `down` refuses new
 * ones, `freeze()` silently drops everything on the open ones (a dead link nobody reports).
 */
export async function startProxy(target) {
  const { port: targetPort, hostname } = new URL(target);
  const net = await import("node:net");
  const pairs = new Set();
  const proxy = {
    down: false,
    url: "",
    cut() {
      for (const pair of pairs) pair.forEach((socket) => socket.destroy());
      pairs.clear();
    },
    freeze() {
      for (const pair of pairs) pair.frozen = true;
    },
    close() {
      proxy.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
  const server = net.createServer((client) => {
    if (proxy.down) return client.destroy();
    const upstream = net.connect(Number(targetPort), hostname);
    const pair = [client, upstream];
    pairs.add(pair);
    const forward = (from, to) => {
      from.on("data", (chunk) => pair.frozen || to.write(chunk));
      from.on("close", () => {
        to.destroy();
        pairs.delete(pair);
      });
      from.on("error", () => {});
    };
    forward(client, upstream);
    forward(upstream, client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.url = `http://127.0.0.1:${server.address().port}`;
  return proxy;
}
