// Shared by the browser tests: a real `wshub serve` on a free port, and Debian's Chromium.
import { spawn, execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

/** The repository's root. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const API_KEY = "test";
const BIN = process.env.WSHUB_BIN || `${ROOT}target/release/wshub`;
const BENCH = process.env.WSHUB_BENCH || `${ROOT}target/release/wshub-bench`;
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
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal)));
  return {
    url,
    log: () => log,
    /** Resolves to the exit code (or the signal's name) once the process has ended. */
    exited,
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
    /** `GET /metrics`: each metric's value summed over its labels, by name. */
    async metrics() {
      const text = await (await fetch(`${url}/metrics`)).text();
      const values = new Map();
      for (const line of text.split("\n")) {
        const found = /^([a-z_:][a-z0-9_:]*)(?:\{[^}]*\})? (\S+)$/i.exec(line);
        if (found) values.set(found[1], (values.get(found[1]) ?? 0) + Number(found[2]));
      }
      return values;
    },
    /** `GET /api/stats`: {connections, tasks}. */
    async stats() {
      const response = await fetch(`${url}/api/stats`, { headers: { authorization: `Bearer ${API_KEY}` } });
      return response.json();
    },
    /** Ends the process with `signal` (SIGKILL: a node that dies without a word). */
    async stop(signal = "SIGTERM") {
      if (child.exitCode !== null || child.signalCode !== null) return; // ended already
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill(signal);
      await exited;
    },
  };
}

/**
 * Starts `wshub-bench ARGS` (building the release binary if it is missing); `done`
 * resolves to {code, stdout, stderr} when it exits, `stop()` ends it early.
 */
export function startBench(args) {
  if (!existsSync(BENCH)) {
    execFileSync("cargo", ["build", "--release", "-p", "wshub-bench"], { cwd: ROOT, stdio: "inherit" });
  }
  const child = spawn(BENCH, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8").on("data", (chunk) => (stdout += chunk));
  child.stderr.setEncoding("utf8").on("data", (chunk) => (stderr = (stderr + chunk).slice(-20_000)));
  const done = new Promise((resolve, reject) => {
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
  return {
    done,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await done.catch(() => {});
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

/** A port nobody listens on now. */
export async function freePort() {
  const net = await import("node:net");
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Waits until something accepts TCP connections on `port`. */
async function listening(port, what, child) {
  const net = await import("node:net");
  for (let i = 0; i < 200; i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited (${child.exitCode})`);
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => socket.end(() => resolve(true)));
      socket.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${what} is not listening on ${port}`);
}

/** Debian's `redis-server` on a free port, without persistence, in a temp dir. */
export async function startRedis() {
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(`${tmpdir()}/wshub-redis-`);
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], {
    stdio: "ignore",
  });
  await listening(port, "redis-server", child);
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGKILL");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Debian's nginx on a free port in a temp dir, proxying HTTP and WebSockets round-robin to
 * `targets` (http://HOST:PORT URLs), no sticky sessions: a client may land on any node.
 */
export async function startNginx(targets) {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(`${tmpdir()}/wshub-nginx-`);
  const port = await freePort();
  const servers = targets.map((t) => `    server ${new URL(t).host} max_fails=1 fail_timeout=30s;`).join("\n");
  writeFileSync(
    `${dir}/nginx.conf`,
    `daemon off;
master_process off;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream wshub {
${servers}
  }
  map $http_upgrade $connection_upgrade { default upgrade; "" close; }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://wshub;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $http_host;
      proxy_read_timeout 1h;
      proxy_next_upstream error timeout;
      proxy_connect_timeout 2s;
    }
  }
}
`,
  );
  const nginx = existsSync("/usr/sbin/nginx") ? "/usr/sbin/nginx" : "nginx";
  const child = spawn(nginx, ["-p", dir, "-c", `${dir}/nginx.conf`], { stdio: "ignore" });
  await listening(port, "nginx", child);
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Nodes sharing one Redis behind nginx: a `wshub serve --broker redis://…` per name
 * (presence_ttl 3 s, then `args`), round-robin. `stop()` ends nginx, the nodes, Redis.
 */
export async function startCluster(names, args = []) {
  const redis = await startRedis();
  const nodes = [];
  let nginx;
  const stop = async () => {
    await nginx?.stop();
    for (const node of nodes) await node.stop();
    await redis.stop();
  };
  try {
    for (const name of names) {
      nodes.push(await startServer(["--broker", redis.url, "--node-name", name, "--presence-ttl", "3s", ...args]));
    }
    nginx = await startNginx(nodes.map((node) => node.url));
  } catch (error) {
    await stop();
    throw error;
  }
  return { redis, nodes, nginx, stop };
}
