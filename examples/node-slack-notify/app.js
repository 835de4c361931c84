// The seed tutorial ("post deployment alerts to your users' Slack"), with
// every piece of OAuth in the tokenvault sidecar: the app never sees a
// client secret, a code or a refresh token. It
//   (a) sends the user to connect Slack (the sidecar's connect page),
//   (b) lists the channels they can pick (conversations.list),
//   (c) posts a deployment alert (chat.postMessage) with a token fetched
//       from the sidecar by user and provider,
//   (d) sends the user to reconnect when the sidecar says
//       NEEDS_REAUTHORIZATION, and
//   (e) receives connection.needs_reauth webhooks, verified.
import express from "express";
import {
  TokenVaultClient, isNotConnected, isReauthRequired, verifyWebhook, WebhookVerificationError,
} from "@tokenvault/client";

/**
 * @typedef {object} AppOptions
 * @property {TokenVaultClient} tokenvault   the sidecar's client
 * @property {string[]} webhookSecrets        "whsec_..." (several while rotating)
 * @property {string} appURL                  this app's base URL as browsers see it
 * @property {string} [slackAPI]              Slack's Web API base; default https://slack.com/api
 * @property {string} [provider]              the sidecar's name for Slack; default "slack"
 */

// Slack answers a dead token with HTTP 200 and ok:false, which no 401
// retry sees: these codes mean "the token", not "the request".
const slackAuthErrors = new Set(["invalid_auth", "token_expired", "token_revoked", "account_inactive", "not_authed"]);

class SlackError extends Error {
  constructor(method, code) {
    super(`slack: ${method}: ${code}`);
    this.code = code;
  }
}

// Bounds on what a browser sends, before it reaches Slack or a log.
const userPattern = /^[A-Za-z0-9_.@-]{1,128}$/;
const channelPattern = /^[CG][A-Z0-9]{2,30}$/;
const maxText = 4000;

/** createApp returns the Express application. */
export function createApp(opts) {
  const tv = opts.tokenvault;
  const slackAPI = (opts.slackAPI ?? "https://slack.com/api").replace(/\/+$/, "");
  const provider = opts.provider ?? "slack";
  // Users whose Slack grant a webhook said is dead, with the reason; a
  // real app keeps this in its database. Keyed by event id too, to drop
  // redeliveries (webhooks are at least once).
  const needsReauth = new Map();
  const seenEvents = new Set();

  /** slack calls a Web API method as the user's Slack install. */
  async function slack(user, method, body) {
    const target = { owner: user, provider };
    const call = async (force) => {
      const { accessToken } = await tv.getAccessToken(target, { forceRefresh: force });
      const res = await fetch(`${slackAPI}/${method}`, {
        method: "POST",
        headers: { authorization: `Bearer ${accessToken}`, "content-type": "application/json; charset=utf-8" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(15_000),
      });
      if (!res.ok) throw new SlackError(method, `HTTP ${res.status}`);
      const out = await res.json();
      if (!out.ok) throw new SlackError(method, String(out.error ?? "unknown_error"));
      return out;
    };
    try {
      return await call(false);
    } catch (err) {
      // Slack rejected the token: ask the sidecar for a new one. If Slack
      // rejects the grant itself the sidecar says so (isReauthRequired);
      // otherwise try once more. The first call failed, so nothing is
      // posted twice.
      if (err instanceof SlackError && slackAuthErrors.has(err.code)) return call(true);
      throw err;
    }
  }

  function user(req) {
    // Stands in for your app's session: who is logged in.
    const u = String(req.query.user ?? req.body?.user ?? "");
    return userPattern.test(u) ? u : undefined;
  }

  const connectPath = (u) => `/connect/slack?user=${encodeURIComponent(u)}`;

  /** reply answers an error the way the user can act on it. */
  function fail(res, u, err) {
    if (isReauthRequired(err) || isNotConnected(err)) {
      // (d) The grant is dead or missing: send the user to (re)connect.
      return res.status(409).json({
        error: isReauthRequired(err) ? "slack_needs_reconnect" : "slack_not_connected",
        reconnect: connectPath(u),
      });
    }
    if (err instanceof SlackError) return res.status(502).json({ error: err.code });
    console.error("tokenvault:", err.code ?? "", err.message);
    return res.status(503).json({ error: "tokenvault_unavailable" });
  }

  const app = express();
  app.disable("x-powered-by");

  // (e) Webhooks: the raw body is what is signed, so parse it only after
  // verifying. Mounted before any JSON parser.
  app.post("/webhooks/tokenvault", express.raw({ type: () => true, limit: "1mb" }), (req, res) => {
    let event;
    try {
      event = verifyWebhook(opts.webhookSecrets, req.headers, req.body);
    } catch (err) {
      if (err instanceof WebhookVerificationError) return res.status(401).end();
      return res.status(400).end();
    }
    if (!seenEvents.has(event.data.event_id)) {
      seenEvents.add(event.data.event_id);
      const c = event.data.connection;
      if (event.type === "connection.needs_reauth" && c.provider === provider) {
        needsReauth.set(c.owner, event.data.reason || c.status_reason || "needs_reauth");
      } else if ((event.type === "connection.reconnected" || event.type === "connection.recovered") && c.provider === provider) {
        needsReauth.delete(c.owner);
      }
    }
    res.status(204).end();
  });

  app.use(express.json({ limit: "16kb" }));
  app.use(express.urlencoded({ extended: false, limit: "16kb" }));

  app.get("/healthz", (_req, res) => res.send("ok"));

  // (a) Connect Slack: a connect session for this user, limited to Slack,
  // and a redirect to the sidecar's connect page. The page shows the
  // user's state (connected, needs reconnecting, not connected), runs the
  // whole OAuth flow bound to this browser, and links back here. The link
  // holds a secret for this user's browser: it is never logged.
  app.get("/connect/slack", async (req, res) => {
    const u = user(req);
    if (!u) return res.status(400).send("a user is required");
    try {
      const { url } = await tv.createConnectSession({
        owner: u, providers: [provider], allowDisconnect: true, ttlMs: 15 * 60 * 1000,
        returnTo: `${opts.appURL}/?user=${encodeURIComponent(u)}`,
        appMetadata: { source: "node-slack-notify" },
      });
      res.set("cache-control", "no-store").redirect(302, url);
    } catch (err) {
      fail(res, u, err);
    }
  });

  // The user's Slack connection as the app sees it.
  app.get("/status", async (req, res) => {
    const u = user(req);
    if (!u) return res.status(400).json({ error: "a user is required" });
    let slackStatus = "not_connected";
    try {
      slackStatus = (await tv.getConnection({ owner: u, provider })).status;
    } catch (err) {
      if (!isNotConnected(err)) return fail(res, u, err);
    }
    res.json({ slack: slackStatus, webhookSaysReconnect: needsReauth.get(u) ?? null, connect: connectPath(u) });
  });

  // (b) The channel picker's choices: public channels, bot member or not.
  app.get("/channels", async (req, res) => {
    const u = user(req);
    if (!u) return res.status(400).json({ error: "a user is required" });
    try {
      const channels = [];
      let cursor = "";
      for (let page = 0; page < 10; page++) {
        const out = await slack(u, "conversations.list", { types: "public_channel", exclude_archived: true, limit: 200, cursor });
        for (const c of out.channels ?? []) channels.push({ id: c.id, name: c.name, isMember: Boolean(c.is_member) });
        cursor = out.response_metadata?.next_cursor ?? "";
        if (!cursor) break;
      }
      res.json({ channels });
    } catch (err) {
      fail(res, u, err);
    }
  });

  // (c) Post a deployment alert to the chosen channel.
  app.post("/alerts", async (req, res) => {
    const u = user(req);
    const channel = String(req.body?.channel ?? "");
    const text = String(req.body?.text ?? "");
    if (!u || !channelPattern.test(channel) || text === "" || text.length > maxText) {
      return res.status(400).json({ error: "user, channel (a Slack channel id) and text (at most 4000 characters) are required" });
    }
    try {
      const out = await slack(u, "chat.postMessage", { channel, text });
      res.json({ ok: true, channel: out.channel, ts: out.ts });
    } catch (err) {
      fail(res, u, err);
    }
  });

  // A page for trying it in a browser.
  app.get("/", async (req, res) => {
    const u = user(req);
    if (!u) return res.type("html").send(`<form><label>User id <input name="user"></label> <button>Go</button></form>`);
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    let body;
    try {
      const conn = await tv.getConnection({ owner: u, provider });
      if (conn.status !== "active") throw Object.assign(new Error(conn.status), { reconnect: true });
      const out = await slack(u, "conversations.list", { types: "public_channel", exclude_archived: true, limit: 200 });
      const options = (out.channels ?? []).filter((c) => c.is_member)
        .map((c) => `<option value="${esc(c.id)}">#${esc(c.name)}</option>`).join("");
      body = `<p>Slack connected (${esc(conn.account || conn.connectionId)}).</p>
<form method="post" action="/alerts"><input type="hidden" name="user" value="${esc(u)}">
<select name="channel">${options}</select> <input name="text" value="Deployed v1.2.3 to production">
<button>Post alert</button></form>`;
    } catch (err) {
      const again = err.reconnect || isReauthRequired(err);
      if (!again && !isNotConnected(err)) return fail(res, u, err);
      body = `<p>${again ? "Slack needs reconnecting." : "Slack is not connected."}</p><a href="${esc(connectPath(u))}">${again ? "Reconnect" : "Connect"} Slack</a>`;
    }
    res.type("html").send(`<!doctype html><title>Deploy alerts</title><h1>Deploy alerts for ${esc(u)}</h1>${body}`);
  });

  return app;
}
