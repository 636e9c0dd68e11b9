#!/usr/bin/env node
// Mints an HS256 JWT for wshub (`jwt_hmac_secret`), for trying users out and for tests:
//
//   node scripts/mint-token.mjs --secret "$WSHUB_JWT_HMAC_SECRET" --sub alice --ttl 3600 \
//        [--channels 'chat:*,news'] [--publish 'chat:*']
//
// Prints the token. In production your own server mints tokens after its login: never
// give the HMAC secret to a browser.
import { createHmac } from "node:crypto";

/** An HS256 JWT of `claims` signed with `secret`. */
export function mint(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const args = Object.fromEntries(
    process.argv.slice(2).reduce((pairs, arg, i, all) => (arg.startsWith("--") ? [...pairs, [arg.slice(2), all[i + 1]]] : pairs), []),
  );
  if (!args.secret || !args.sub) {
    console.error("usage: mint-token.mjs --secret SECRET --sub USER [--ttl SECONDS] [--channels a,b*] [--publish a*]");
    process.exit(2);
  }
  const claims = { sub: args.sub, exp: Math.floor(Date.now() / 1000) + Number(args.ttl || 3600) };
  if (args.channels) claims.channels = args.channels.split(",");
  if (args.publish) claims.publish = args.publish.split(",");
  console.log(mint(args.secret, claims));
}
