import { createHmac, timingSafeEqual } from "node:crypto";

/** How far webhook-timestamp may be from now by default, in seconds. */
export const DEFAULT_WEBHOOK_TOLERANCE_SECONDS = 5 * 60;

/** Webhook bodies larger than this are refused unread. */
export const MAX_WEBHOOK_BODY_BYTES = 1 << 20;

/**
 * WebhookVerificationError: the request is not a webhook signed by the
 * sidecar now. kind "signature" covers missing or malformed headers and
 * signatures that match no secret; "timestamp" a webhook-timestamp outside
 * the tolerance (a replay, or a badly wrong clock). The message never
 * repeats a secret or a signature.
 */
export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
  constructor(readonly kind: "signature" | "timestamp", message: string) {
    super(`tokenvault: webhook ${message}`);
  }
}

/** A connection as a webhook describes it, without token material. */
export interface WebhookConnection {
  connection_id: string;
  owner: string;
  tenant?: string;
  provider: string;
  label?: string;
  purpose?: string;
  /** "active", "needs_reauth" or "revoked". */
  status: string;
  status_reason?: string;
  requested_scopes?: string[];
  granted_scopes?: string[];
  missing_scopes?: string[];
  account?: string;
  metadata?: Record<string, string>;
  create_time?: string;
  update_time?: string;
  last_refresh_time?: string;
  last_validated_time?: string;
  token_expire_time?: string;
  generation: number;
  credentials?: string[];
}

/** The body of a tokenvault webhook (Standard Webhooks: type, timestamp, data). */
export interface WebhookEvent {
  /** "connection.created", "connection.needs_reauth", ... */
  type: string;
  timestamp: string;
  data: {
    /** Equals the webhook-id header; stable across retries: deduplicate on it. */
    event_id: string;
    type: string;
    sequence: number;
    /** An event with a lower connection_sequence than one already handled is stale. */
    connection_sequence: number;
    time: string;
    reason?: string;
    connection: WebhookConnection;
  };
}

/** Options of verifyWebhook. */
export interface VerifyWebhookOptions {
  /** How far webhook-timestamp may be from now, in seconds; default 300. */
  toleranceSeconds?: number;
  /** The clock, in Unix seconds; default now. */
  nowSeconds?: number;
}

/** Request headers: Node's (lower-case names) or a fetch Headers. */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

function header(h: WebhookHeaders, name: string): string {
  if (typeof (h as Headers).get === "function") return (h as Headers).get(name) ?? "";
  const v = (h as Record<string, string | string[] | undefined>)[name];
  return Array.isArray(v) ? (v[0] ?? "") : (v ?? "");
}

function decodeSecret(secret: string, i: number): Buffer {
  const b64 = secret.trim().replace(/^whsec_/, "");
  const key = Buffer.from(b64, "base64");
  // Buffer.from ignores what is not base64; a secret must round-trip.
  if (key.length === 0 || key.toString("base64").replace(/=+$/, "") !== b64.replace(/=+$/, "")) {
    throw new TypeError(`tokenvault: webhook secret ${i + 1} is not whsec_ followed by standard base64`);
  }
  return key;
}

/**
 * verifyWebhook checks the Standard Webhooks signature a tokenvault sidecar
 * puts on its webhook requests and returns the decoded event.
 * webhook-signature holds one or more space-separated "v1,<base64
 * HMAC-SHA256>" of "<webhook-id>.<webhook-timestamp>.<body>", one per
 * secret the sidecar signs with; a signature by any of secrets ("whsec_...";
 * pass the old and the new one while rotating) is accepted. body must be
 * the raw request body, before any JSON parsing. Signatures are compared in
 * constant time. It throws a WebhookVerificationError if the request does
 * not verify, and a TypeError if a secret is malformed.
 */
export function verifyWebhook(
  secrets: string | readonly string[],
  headers: WebhookHeaders,
  body: Uint8Array | string,
  opts: VerifyWebhookOptions = {},
): WebhookEvent {
  const list = typeof secrets === "string" ? [secrets] : secrets;
  if (list.length === 0) throw new TypeError("tokenvault: verifyWebhook needs a secret");
  const keys = list.map(decodeSecret);
  const raw = typeof body === "string" ? Buffer.from(body) : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (raw.length > MAX_WEBHOOK_BODY_BYTES) {
    throw new WebhookVerificationError("signature", `body larger than ${MAX_WEBHOOK_BODY_BYTES} bytes`);
  }
  const id = header(headers, "webhook-id"), ts = header(headers, "webhook-timestamp"), sigs = header(headers, "webhook-signature");
  if (!id || !ts || !sigs) {
    throw new WebhookVerificationError("signature", "webhook-id, webhook-timestamp and webhook-signature are required");
  }
  if (!/^[0-9]{1,15}$/.test(ts)) throw new WebhookVerificationError("signature", "webhook-timestamp is not a Unix time");
  const now = opts.nowSeconds ?? Math.floor(Date.now() / 1000);
  const tolerance = opts.toleranceSeconds ?? DEFAULT_WEBHOOK_TOLERANCE_SECONDS;
  const off = now - Number(ts);
  if (Math.abs(off) > tolerance) throw new WebhookVerificationError("timestamp", `timestamp ${off}s off, outside the tolerance`);

  const expected = keys.map((k) => createHmac("sha256", k).update(`${id}.${ts}.`).update(raw).digest());
  let ok = false;
  for (const sig of sigs.split(" ")) {
    if (!sig.startsWith("v1,")) continue; // another scheme (v1a, ...): not ours to check
    const got = Buffer.from(sig.slice(3), "base64");
    for (const e of expected) {
      if (got.length === e.length && timingSafeEqual(got, e)) ok = true;
    }
  }
  if (!ok) throw new WebhookVerificationError("signature", "has no v1 signature matching a secret");
  return JSON.parse(raw.toString("utf8")) as WebhookEvent;
}
