// verifyWebhook on requests signed here; the client test checks it against
// requests the sidecar signed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { verifyWebhook, WebhookVerificationError } from "../src/index.js";

const secret = `whsec_${randomBytes(24).toString("base64")}`;
const body = Buffer.from(JSON.stringify({ type: "connection.needs_reauth", timestamp: "2026-11-22T12:00:00Z", data: { event_id: "evt_1" } }));
const now = 1_795_348_800;

function sign(s: string, id: string, ts: number, b: Buffer): string {
  const key = Buffer.from(s.replace(/^whsec_/, ""), "base64");
  return "v1," + createHmac("sha256", key).update(`${id}.${ts}.`).update(b).digest("base64");
}

test("verifyWebhook", async (t) => {
  const headers = { "webhook-id": "evt_1", "webhook-timestamp": String(now), "webhook-signature": sign(secret, "evt_1", now, body) };
  const rows: { name: string; headers: Record<string, string>; body?: Buffer; secrets?: string[]; now?: number; want?: "signature" | "timestamp" }[] = [
    { name: "valid", headers },
    { name: "valid among other schemes and secrets", headers: { ...headers, "webhook-signature": `v1a,abc v1,${randomBytes(32).toString("base64")} ${headers["webhook-signature"]}` } },
    { name: "second secret during rotation", headers, secrets: [`whsec_${randomBytes(24).toString("base64")}`, secret] },
    { name: "tampered body", headers, body: Buffer.from(body.toString().replace("needs_reauth", "created")), want: "signature" },
    { name: "other id", headers: { ...headers, "webhook-id": "evt_2" }, want: "signature" },
    { name: "no signature", headers: { ...headers, "webhook-signature": "" }, want: "signature" },
    { name: "not a timestamp", headers: { ...headers, "webhook-timestamp": "12e3" }, want: "signature" },
    { name: "too old", headers, now: now + 301, want: "timestamp" },
    { name: "too far ahead", headers, now: now - 301, want: "timestamp" },
    { name: "wrong secret", headers, secrets: [`whsec_${randomBytes(24).toString("base64")}`], want: "signature" },
  ];
  for (const r of rows) {
    await t.test(r.name, () => {
      const run = () => verifyWebhook(r.secrets ?? secret, r.headers, r.body ?? body, { nowSeconds: r.now ?? now });
      if (!r.want) {
        assert.equal(run().data.event_id, "evt_1");
      } else {
        assert.throws(run, (e: unknown) => e instanceof WebhookVerificationError && e.kind === r.want);
      }
    });
  }
  assert.throws(() => verifyWebhook("whsec_not base64!", headers, body), TypeError);
  assert.throws(() => verifyWebhook([], headers, body), TypeError);
  // A fetch Headers works as well as Node's header object.
  assert.equal(verifyWebhook(secret, new Headers(headers), body, { nowSeconds: now }).type, "connection.needs_reauth");
});
