// The client against a real sidecar (tokenvault serve --dev): the sandbox
// provider completes connect flows over plain HTTP.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import {
  TokenVaultClient, TokenVaultError, isReauthRequired, isNotConnected, retryAfterMs, verifyWebhook,
  WebhookVerificationError, type ConnectionEvent,
} from "../src/index.js";
import { Browser, completeConnect, startSidecar, type Sidecar } from "./sidecar.js";

/** connect runs a sandbox connect flow for owner and returns the connection id. */
async function connect(tv: TokenVaultClient, owner: string, label = ""): Promise<string> {
  const { authorizationUrl } = await tv.startConnect({ owner, provider: "sandbox", scopes: ["read"], label });
  const page = await completeConnect(authorizationUrl);
  assert.equal(page.status, 200, `connect flow for ${owner}: ${page.body}`);
  const { connections } = await tv.listConnections({ owner, provider: "sandbox" });
  const c = connections.find((c) => c.label === label);
  assert.ok(c, `no connection of ${owner} after the flow`);
  return c.connectionId;
}

/**
 * forceable waits until a token obtained now can be force-refreshed: the
 * sidecar does not refresh a token younger than 2 s again.
 */
const forceable = () => new Promise((res) => setTimeout(res, 2100));

/** rejection awaits p's rejection and returns it as a TokenVaultError. */
async function rejection(p: Promise<unknown>): Promise<TokenVaultError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof TokenVaultError, `rejected with ${err}; want a TokenVaultError`);
    return err;
  }
  assert.fail("resolved; want a rejection");
}

/** A webhook receiver collecting what the sidecar posts. */
interface Hook { headers: IncomingHttpHeaders; body: Buffer }

describe("against a dev sidecar", () => {
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  const hooks: Hook[] = [];
  let receiver: Server;
  let sc: Sidecar;
  let app: TokenVaultClient, op: TokenVaultClient;

  before(async () => {
    receiver = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        hooks.push({ headers: req.headers, body: Buffer.concat(chunks) });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((res) => receiver.listen(0, "127.0.0.1", res));
    const port = (receiver.address() as AddressInfo).port;
    sc = await startSidecar({
      config: `webhooks:
  - name: test
    url: http://127.0.0.1:${port}/hooks
    secret_envs: [TV_WEBHOOK_SECRET]
    allow_private: true
auth:
  api_keys:
    - name: limited
      key_env: TV_LIMITED_KEY
      role: application
      rate_limit: {rps: 0.01, burst: 1}
`,
      env: { TV_WEBHOOK_SECRET: secret, TV_LIMITED_KEY: "tvk_limited_test_key" },
    });
    app = new TokenVaultClient({ address: sc.grpcAddr, apiKey: sc.appKey });
    op = new TokenVaultClient({ address: sc.grpcAddr, apiKey: sc.operatorKey });
  });
  after(async () => {
    await sc?.stop();
    receiver?.close();
  });

  test("a token by id and by owner and provider", async () => {
    const id = await connect(app, "alice");
    const byID = await app.getAccessToken(id, { minValidFor: 60_000 });
    assert.match(byID.accessToken, /^sbx_at_/);
    assert.equal(byID.connectionId, id);
    assert.equal(byID.provider, "sandbox");
    assert.ok(byID.expireTime && byID.expireTime.getTime() > Date.now() + 60_000, `expireTime ${byID.expireTime}`);
    assert.deepEqual(byID.grantedScopes, ["read"]);
    await forceable();

    const bySelector = await app.getAccessToken({ owner: "alice", provider: "sandbox" });
    assert.equal(bySelector.connectionId, id);
    assert.equal(bySelector.accessToken, byID.accessToken);

    const forced = await app.getAccessToken({ owner: "alice", provider: "sandbox" }, { forceRefresh: true });
    assert.notEqual(forced.accessToken, byID.accessToken, "forceRefresh returned the same token");

    const conn = await app.getConnection({ owner: "alice", provider: "sandbox" });
    assert.equal(conn.connectionId, id);
    assert.equal(conn.status, "active");
    assert.ok(conn.lastRefreshTime instanceof Date);
  });

  test("bad targets and missing connections are refused with their reason", async () => {
    let e = await rejection(app.getAccessToken({ owner: "nobody", provider: "sandbox" }));
    assert.equal(e.code, "NOT_FOUND");
    assert.equal(e.reason, "NOT_CONNECTED");
    assert.ok(isNotConnected(e));
    assert.ok(!isReauthRequired(e));

    e = await rejection(app.getAccessToken({ connectionId: "conn_x", owner: "alice", provider: "sandbox" } as never));
    assert.equal(e.code, "INVALID_ARGUMENT");
    assert.equal(e.reason, "INVALID_ARGUMENT");
    e = await rejection(app.getAccessToken({ connectionId: "" }));
    assert.equal(e.code, "INVALID_ARGUMENT");

    // Two connections of one owner and provider: the label must say which.
    await connect(app, "bob", "work");
    await connect(app, "bob", "home");
    e = await rejection(app.getAccessToken({ owner: "bob", provider: "sandbox" }));
    assert.equal(e.code, "INVALID_ARGUMENT");
    const home = await app.getAccessToken({ owner: "bob", provider: "sandbox", label: "home" });
    assert.equal((await app.getConnection(home.connectionId)).label, "home");
  });

  test("credentials: none, the wrong role, a spent rate limit", async () => {
    const anon = new TokenVaultClient({ address: sc.grpcAddr });
    let e = await rejection(anon.listConnections());
    assert.equal(e.code, "UNAUTHENTICATED");
    assert.equal(e.reason, "UNAUTHENTICATED");

    const id = await connect(app, "carol");
    e = await rejection(app.revokeConnection(id, "test"));
    assert.equal(e.code, "PERMISSION_DENIED");

    const limited = new TokenVaultClient({ address: sc.grpcAddr, apiKey: "tvk_limited_test_key" });
    await limited.listProviders();
    e = await rejection(limited.listProviders());
    assert.equal(e.code, "RESOURCE_EXHAUSTED");
    assert.equal(e.reason, "RATE_LIMITED");
    const wait = retryAfterMs(e);
    assert.ok(wait !== undefined && wait >= 1000, `retryAfterMs = ${wait}`);
    assert.equal(retryAfterMs(new Error("x")), undefined);
  });

  test("createConnectSession links to the connect page for one owner", async () => {
    const before = Date.now();
    const s = await app.createConnectSession({ owner: "dora", allowDisconnect: true, ttlMs: 10 * 60_000, appMetadata: { crm_id: "7" } });
    const u = new URL(s.url);
    assert.match(u.pathname, /^\/connect\/s\/[A-Z0-9]{40,}$/);
    assert.ok(s.expireTime && Math.abs(s.expireTime.getTime() - before - 10 * 60_000) < 60_000, `expireTime ${s.expireTime}`);
    const page = await new Browser().get(s.url);
    assert.equal(page.status, 200, page.body);
    assert.match(page.body, /Not connected/);
    assert.ok(!page.body.includes(u.pathname.split("/").pop()!), "the page shows the session token");
    const err = await rejection(app.createConnectSession({ owner: "dora", ttlMs: 2 * 3600_000 }));
    assert.equal(err.reason, "INVALID_ARGUMENT");
  });

  test("revoke, then the token is refused as not connected", async () => {
    const id = await connect(app, "dave");
    const r = await op.revokeConnection(id, "node test");
    assert.equal(r.connection?.status, "revoked");
    assert.ok(r.providerRevoked);
    const e = await rejection(app.getAccessToken(id));
    assert.equal(e.code, "FAILED_PRECONDITION");
    assert.ok(isNotConnected(e));
  });

  test("watchEvents yields events in order and resumes after a sequence", async () => {
    const seen: ConnectionEvent[] = [];
    for await (const ev of app.watchEvents()) {
      seen.push(ev);
      if (ev.type === "connection.revoked") break; // dave's, the last so far
    }
    assert.ok(seen.length >= 2);
    seen.forEach((ev, i) => assert.equal(ev.sequence, BigInt(i + 1), `event ${i} has sequence ${ev.sequence}`));
    const last = seen[seen.length - 1]!.sequence;

    const id = await connect(app, "erin");
    const ac = new AbortController();
    const resumed: ConnectionEvent[] = [];
    for await (const ev of app.watchEvents({ afterSequence: last, signal: ac.signal })) {
      resumed.push(ev);
      ac.abort();
    }
    assert.equal(resumed.length, 1);
    assert.equal(resumed[0]!.sequence, last + 1n);
    assert.equal(resumed[0]!.type, "connection.created");
    assert.equal(resumed[0]!.connection?.connectionId, id);
  });

  test("fetcher sends the token, and after a 401 refreshes and retries once", async () => {
    const id = await connect(app, "frank");
    const stale = (await app.getAccessToken(id)).accessToken;
    await forceable();
    const seen: { auth: string; body: string }[] = [];
    const api = createServer((req, res) => {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        seen.push({ auth: req.headers.authorization ?? "", body });
        // The resource server rejects the token the sidecar holds now.
        res.writeHead(req.headers.authorization === `Bearer ${stale}` ? 401 : 200).end("ok");
      });
    });
    await new Promise<void>((res) => api.listen(0, "127.0.0.1", res));
    try {
      const url = `http://127.0.0.1:${(api.address() as AddressInfo).port}/post`;
      const res = await app.fetcher(id)(url, { method: "POST", body: "hello" });
      assert.equal(res.status, 200);
      assert.equal(seen.length, 2);
      assert.equal(seen[0]!.auth, `Bearer ${stale}`);
      assert.match(seen[1]!.auth, /^Bearer sbx_at_/);
      assert.notEqual(seen[1]!.auth, seen[0]!.auth);
      assert.equal(seen[1]!.body, "hello", "the retry lost the body");

      // A 401 to the refreshed token too is returned, not retried again.
      seen.length = 0;
      await forceable();
      const fresh = (await app.getAccessToken(id)).accessToken;
      const all401 = createServer((req, res) => { seen.push({ auth: req.headers.authorization ?? "", body: "" }); res.writeHead(401).end(); });
      await new Promise<void>((res) => all401.listen(0, "127.0.0.1", res));
      const r2 = await app.fetch(id, `http://127.0.0.1:${(all401.address() as AddressInfo).port}/`);
      all401.close();
      assert.equal(r2.status, 401);
      assert.equal(seen.length, 2);
      assert.equal(seen[0]!.auth, `Bearer ${fresh}`);
    } finally {
      api.close();
    }
  });

  test("verifyWebhook accepts the sidecar's signature and refuses tampering", async () => {
    const deadline = Date.now() + 20_000;
    while (!hooks.some((h) => h.body.includes("connection.created")) && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 100));
    }
    const h = hooks.find((h) => h.body.includes("connection.created"));
    assert.ok(h, `no webhook arrived; logs:\n${sc.logs()}`);
    const other = `whsec_${randomBytes(32).toString("base64")}`;
    const ev = verifyWebhook([other, secret], h.headers, h.body);
    assert.equal(ev.type, "connection.created");
    assert.equal(ev.data.event_id, h.headers["webhook-id"]);
    assert.equal(ev.data.connection.provider, "sandbox");

    const tampered = Buffer.from(h.body.toString().replace("connection.created", "connection.revoked"));
    assert.throws(() => verifyWebhook(secret, h.headers, tampered), (e: unknown) => e instanceof WebhookVerificationError && e.kind === "signature");
    assert.throws(() => verifyWebhook(other, h.headers, h.body), WebhookVerificationError);
    const ts = Number(h.headers["webhook-timestamp"]);
    assert.throws(() => verifyWebhook(secret, h.headers, h.body, { nowSeconds: ts + 301 }), (e: unknown) => e instanceof WebhookVerificationError && e.kind === "timestamp");
    verifyWebhook(secret, h.headers, h.body, { nowSeconds: ts + 301, toleranceSeconds: 600 });
  });
});

describe("reauthorization and restarts", () => {
  let dir: string;
  before(async () => { dir = await mkdtemp(join(tmpdir(), "tokenvault-node-")); });
  after(async () => { await rm(dir, { recursive: true, force: true }); });

  test("a grant the provider forgot is NEEDS_REAUTHORIZATION; watchEvents resumes across the restart", async () => {
    // On a unix socket the address survives the restart.
    const grpcAddr = `unix://${join(dir, "grpc.sock")}`;
    const dataDir = join(dir, "data");
    let sc = await startSidecar({ grpcAddr, dataDir });
    const tv = new TokenVaultClient({ address: grpcAddr, apiKey: sc.appKey });
    const events: ConnectionEvent[] = [];
    const ac = new AbortController();
    const watching = (async () => {
      for await (const ev of tv.watchEvents({ signal: ac.signal, maxBackoffMs: 200 })) events.push(ev);
    })();
    try {
      const id = await connect(tv, "gina");
      await forceable();
      // The sandbox keeps its grants in memory: after a restart it no
      // longer knows the refresh token, as a provider whose user revoked
      // the app. It crashes, so no resume_after_sequence comes with the
      // end of the stream: the client resumes from what it yielded.
      await sc.stop("SIGKILL");
      sc = await startSidecar({ grpcAddr, dataDir });
      const e = await rejection(tv.getAccessToken({ owner: "gina", provider: "sandbox" }, { forceRefresh: true }));
      assert.equal(e.code, "FAILED_PRECONDITION");
      assert.equal(e.reason, "NEEDS_REAUTHORIZATION");
      assert.ok(isReauthRequired(e));

      const deadline = Date.now() + 20_000;
      while (!events.some((ev) => ev.type === "connection.needs_reauth") && Date.now() < deadline) {
        await new Promise((res) => setTimeout(res, 50));
      }
      assert.deepEqual(events.map((ev) => [ev.sequence, ev.type]), [[1n, "connection.created"], [2n, "connection.needs_reauth"]]);
      assert.equal(events[1]!.connection?.connectionId, id);
      assert.equal(events[1]!.connection?.status, "needs_reauth");
    } finally {
      ac.abort();
      await watching;
      await sc.stop();
    }
  });

  test("a sidecar that is down is UNAVAILABLE, naming the address", async () => {
    const addr = `unix://${join(dir, "nobody-listens.sock")}`;
    let e = await rejection(new TokenVaultClient({ address: addr }).getAccessToken("conn_x"));
    assert.equal(e.code, "UNAVAILABLE");
    assert.ok(e.message.includes(addr), e.message);

    const srv = createServer();
    await new Promise<void>((res) => srv.listen(0, "127.0.0.1", res));
    const tcp = `127.0.0.1:${(srv.address() as AddressInfo).port}`;
    await new Promise((res) => srv.close(res)); // the port is free now
    e = await rejection(new TokenVaultClient({ address: tcp }).getAccessToken({ owner: "x", provider: "y" }));
    assert.equal(e.code, "UNAVAILABLE");
    assert.ok(e.message.includes(tcp), e.message);
  });

  test("on a unix socket the sidecar admits the caller by its uid, no key", { skip: process.platform !== "linux" || !process.getuid }, async () => {
    const sock = join(dir, "peer.sock");
    const sc = await startSidecar({
      config: `auth:\n  unix_socket:\n    path: ${sock}\n    peers:\n      - uid: ${process.getuid!()}\n        role: application\n`,
    });
    try {
      const tv = new TokenVaultClient({ address: `unix://${sock}` });
      const id = await connect(tv, "hank");
      assert.match((await tv.getAccessToken(id)).accessToken, /^sbx_at_/);
    } finally {
      await sc.stop();
    }
  });
});
