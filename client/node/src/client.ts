import { connect as netConnect } from "node:net";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { durationFromMs, timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AdminService,
  ConnectionStatus,
  TokenVaultService,
  type Connection as PbConnection,
  type Event as PbEvent,
} from "./gen/tokenvault/v1/tokenvault_pb.js";
import { TokenVaultError, toTokenVaultError, Reason } from "./errors.js";

/** Options of a TokenVaultClient. */
export interface ClientOptions {
  /**
   * The sidecar's gRPC address: "host:port" (default "127.0.0.1:7070"),
   * "http://host:port", or a unix socket as "unix:///path" (or "unix:/path").
   */
  address?: string;
  /**
   * The API key, sent as "authorization: Bearer <key>". Leave it out on a
   * unix socket where the sidecar admits the caller by its uid.
   */
  apiKey?: string;
  /** Deadline of each unary call, in milliseconds; default 10 000. */
  timeoutMs?: number;
}

/**
 * Which connection: its id (a string, or {connectionId}), or the end user
 * and provider ({owner, provider, label?, tenant?}). An owner with several
 * connections to one provider must name the label; the sidecar answers
 * INVALID_ARGUMENT otherwise, and NOT_CONNECTED when none matches.
 */
export type ConnectionTarget =
  | string
  | { connectionId: string }
  | { owner: string; provider: string; label?: string; tenant?: string };

/** Options of getAccessToken. */
export interface TokenOptions {
  /** The token stays valid at least this long, in ms; default 5 minutes (the sidecar's). */
  minValidFor?: number;
  /** Refresh at the provider even if the stored token is valid, e.g. after a 401. */
  forceRefresh?: boolean;
  /** Which token of the connection: "" the primary one; Slack: "user" for the user token. */
  credential?: string;
  signal?: AbortSignal;
}

/** An access token, never a refresh token. */
export interface AccessToken {
  accessToken: string;
  tokenType: string;
  /** Undefined if the token has no known expiry. */
  expireTime?: Date;
  grantedScopes: string[];
  missingScopes: string[];
  /** Non-secret provider metadata (team_id, instance_url, ...). */
  metadata: Record<string, string>;
  connectionId: string;
  provider: string;
}

/** Where a connection is in its lifecycle. */
export type ConnectionStatusName = "active" | "needs_reauth" | "revoked" | "unspecified";

/** A connection, without token material. */
export interface Connection {
  connectionId: string;
  owner: string;
  tenant: string;
  provider: string;
  label: string;
  purpose: string;
  status: ConnectionStatusName;
  /** Why it is not active: "invalid_grant", "refresh_interrupted", ... */
  statusReason: string;
  requestedScopes: string[];
  grantedScopes: string[];
  missingScopes: string[];
  account: string;
  metadata: Record<string, string>;
  createTime?: Date;
  updateTime?: Date;
  lastRefreshTime?: Date;
  lastUsedTime?: Date;
  lastValidatedTime?: Date;
  tokenExpireTime?: Date;
  generation: bigint;
  credentials: string[];
}

/** A change of a connection's state. */
export interface ConnectionEvent {
  /** Stable across redeliveries; the webhook-id of its webhooks. */
  eventId: string;
  /** "connection.created", "connection.needs_reauth", ... */
  type: string;
  /** Position in the sidecar's event log: resume after it. */
  sequence: bigint;
  connectionSequence: bigint;
  time?: Date;
  reason: string;
  connection?: Connection;
}

/** Filters and paging of listConnections; empty fields match everything. */
export interface ListConnectionsOptions {
  owner?: string;
  provider?: string;
  tenant?: string;
  status?: Exclude<ConnectionStatusName, "unspecified">;
  /** At most 1000; default 100. */
  pageSize?: number;
  pageToken?: string;
}

/** What startConnect needs. */
export interface StartConnectOptions {
  owner: string;
  provider: string;
  tenant?: string;
  /** Empty: the provider's configured scopes. */
  scopes?: string[];
  /** Where the browser goes after the callback; must be on the sidecar's allowlist. */
  returnTo?: string;
  label?: string;
  purpose?: string;
  /** Provider options for this flow (Slack "team", Salesforce "host"). */
  options?: Record<string, string>;
}

/** What createConnectSession needs. */
export interface ConnectSessionOptions {
  owner: string;
  tenant?: string;
  /** The providers the page offers; empty: every configured provider. */
  providers?: string[];
  /** Where the page's "back" link goes; must be on the sidecar's allowlist. */
  returnTo?: string;
  /** Whether the page offers Disconnect (revocation at the provider). */
  allowDisconnect?: boolean;
  /** How long the link works, in ms, up to an hour; default 30 minutes. */
  ttlMs?: number;
  /** Set on the connections the page's flows create. */
  appMetadata?: Record<string, string>;
}

/** Options of watchEvents. */
export interface WatchEventsOptions {
  /** Start after this sequence (0: from the oldest retained event). */
  afterSequence?: bigint | number;
  /** Only these types; empty: all. */
  types?: string[];
  /** Ends the iteration. */
  signal?: AbortSignal;
  /** The longest wait between reconnections, in ms; default 5000. */
  maxBackoffMs?: number;
}

const statusNames: Record<ConnectionStatus, ConnectionStatusName> = {
  [ConnectionStatus.UNSPECIFIED]: "unspecified",
  [ConnectionStatus.ACTIVE]: "active",
  [ConnectionStatus.NEEDS_REAUTH]: "needs_reauth",
  [ConnectionStatus.REVOKED]: "revoked",
};
const statusValues: Record<Exclude<ConnectionStatusName, "unspecified">, ConnectionStatus> = {
  active: ConnectionStatus.ACTIVE,
  needs_reauth: ConnectionStatus.NEEDS_REAUTH,
  revoked: ConnectionStatus.REVOKED,
};

const date = (t: Timestamp | undefined) => (t ? timestampDate(t) : undefined);

function toConnection(c: PbConnection): Connection {
  return {
    connectionId: c.connectionId, owner: c.owner, tenant: c.tenant, provider: c.provider,
    label: c.label, purpose: c.purpose, status: statusNames[c.status] ?? "unspecified",
    statusReason: c.statusReason, requestedScopes: c.requestedScopes, grantedScopes: c.grantedScopes,
    missingScopes: c.missingScopes, account: c.account, metadata: { ...c.metadata },
    createTime: date(c.createTime), updateTime: date(c.updateTime), lastRefreshTime: date(c.lastRefreshTime),
    lastUsedTime: date(c.lastUsedTime), lastValidatedTime: date(c.lastValidatedTime),
    tokenExpireTime: date(c.tokenExpireTime), generation: c.generation, credentials: c.credentials,
  };
}

function toEvent(e: PbEvent): ConnectionEvent {
  return {
    eventId: e.eventId, type: e.type, sequence: e.sequence, connectionSequence: e.connectionSequence,
    time: date(e.time), reason: e.reason, connection: e.connection ? toConnection(e.connection) : undefined,
  };
}

/** The request fields naming a connection. */
function target(t: ConnectionTarget) {
  if (typeof t === "string") return { connectionId: t };
  if ("connectionId" in t && !("owner" in t) && !("provider" in t)) return { connectionId: t.connectionId };
  // Both, or neither: sent as given, for the sidecar to refuse with a
  // message saying which (one rule, in one place).
  const any = t as { connectionId?: string; owner?: string; provider?: string; label?: string; tenant?: string };
  return {
    connectionId: any.connectionId ?? "",
    selector: { owner: any.owner ?? "", provider: any.provider ?? "", label: any.label ?? "", tenant: any.tenant ?? "" },
  };
}

/** parseAddress turns an address into a base URL and, for a unix socket, its path. */
function parseAddress(address: string): { baseUrl: string; socketPath?: string } {
  const unix = /^unix:(?:\/\/)?(\/.*)$/.exec(address);
  if (unix) return { baseUrl: "http://localhost", socketPath: unix[1] };
  if (/^https?:\/\//.test(address)) return { baseUrl: address.replace(/\/+$/, "") };
  if (/^[^/\s]+:[0-9]{1,5}$/.test(address)) return { baseUrl: `http://${address}` };
  throw new TypeError(`tokenvault: address ${JSON.stringify(address)} is not host:port, http://host:port or unix:///path`);
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });

/**
 * TokenVaultClient calls a tokenvault sidecar over gRPC (HTTP/2 on a
 * loopback port or a unix socket). It holds one HTTP/2 connection, opened
 * on the first call and reopened as needed; it is safe to share across
 * concurrent requests. Every method rejects with a TokenVaultError.
 */
export class TokenVaultClient {
  /** The address calls go to, as given. */
  readonly address: string;
  private readonly svc: Client<typeof TokenVaultService>;
  private readonly admin: Client<typeof AdminService>;
  private readonly timeoutMs: number;

  constructor(opts: ClientOptions = {}) {
    this.address = opts.address ?? "127.0.0.1:7070";
    const { baseUrl, socketPath } = parseAddress(this.address);
    const interceptors: Interceptor[] = [];
    if (opts.apiKey) {
      if (/[\r\n]/.test(opts.apiKey)) throw new TypeError("tokenvault: apiKey holds a line break");
      const auth = `Bearer ${opts.apiKey}`;
      interceptors.push((next) => (req) => {
        req.header.set("authorization", auth);
        return next(req);
      });
    }
    const transport = createGrpcTransport({
      baseUrl,
      interceptors,
      nodeOptions: socketPath ? { createConnection: () => netConnect(socketPath) } : undefined,
    });
    this.svc = createClient(TokenVaultService, transport);
    this.admin = createClient(AdminService, transport);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  private async call<T>(f: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    try {
      return await f();
    } catch (err) {
      throw toTokenVaultError(err, this.address, signal);
    }
  }

  /**
   * getAccessToken returns an access token for the connection that stays
   * valid for at least minValidFor, refreshing at the provider first if
   * needed. It rejects with reason NOT_CONNECTED if no connection matches
   * or it was revoked, and NEEDS_REAUTHORIZATION (isReauthRequired) if the
   * provider rejected the grant: the user must connect again.
   */
  getAccessToken(conn: ConnectionTarget, opts: TokenOptions = {}): Promise<AccessToken> {
    return this.call(async () => {
      const r = await this.svc.getAccessToken({
        ...target(conn),
        minValidFor: opts.minValidFor !== undefined ? durationFromMs(opts.minValidFor) : undefined,
        forceRefresh: opts.forceRefresh ?? false,
        credential: opts.credential ?? "",
      }, { timeoutMs: this.timeoutMs, signal: opts.signal });
      return {
        accessToken: r.accessToken, tokenType: r.tokenType, expireTime: date(r.expireTime),
        grantedScopes: r.grantedScopes, missingScopes: r.missingScopes, metadata: { ...r.metadata },
        connectionId: r.connectionId, provider: r.provider,
      };
    }, opts.signal);
  }

  /** getConnection returns one connection, without token material. */
  getConnection(conn: ConnectionTarget, opts: { signal?: AbortSignal } = {}): Promise<Connection> {
    return this.call(async () => {
      const r = await this.svc.getConnection(target(conn), { timeoutMs: this.timeoutMs, signal: opts.signal });
      if (!r.connection) throw new TokenVaultError("tokenvault: GetConnection answered without a connection", { code: "INTERNAL" });
      return toConnection(r.connection);
    }, opts.signal);
  }

  /** listConnections returns one page of connections; nextPageToken is "" on the last. */
  listConnections(opts: ListConnectionsOptions = {}): Promise<{ connections: Connection[]; nextPageToken: string }> {
    return this.call(async () => {
      const r = await this.svc.listConnections({
        owner: opts.owner ?? "", provider: opts.provider ?? "", tenant: opts.tenant ?? "",
        status: opts.status ? statusValues[opts.status] : ConnectionStatus.UNSPECIFIED,
        pageSize: opts.pageSize ?? 0, pageToken: opts.pageToken ?? "",
      }, { timeoutMs: this.timeoutMs });
      return { connections: r.connections.map(toConnection), nextPageToken: r.nextPageToken };
    });
  }

  /**
   * startConnect begins the authorization-code flow: send the end user's
   * browser to authorizationUrl before expireTime. It is the sidecar's
   * start URL, which binds the flow to the browser that opens it.
   */
  startConnect(opts: StartConnectOptions): Promise<{ authorizationUrl: string; expireTime?: Date }> {
    return this.call(async () => {
      const r = await this.svc.startConnect({
        owner: opts.owner, provider: opts.provider, tenant: opts.tenant ?? "", scopes: opts.scopes ?? [],
        returnTo: opts.returnTo ?? "", label: opts.label ?? "", purpose: opts.purpose ?? "", options: opts.options ?? {},
      }, { timeoutMs: this.timeoutMs });
      return { authorizationUrl: r.authorizationUrl, expireTime: date(r.expireTime) };
    });
  }

  /**
   * createConnectSession returns a link to the sidecar's connect page for
   * one owner: redirect the browser to url, or open it in a popup with the
   * sidecar's /connect/embed.js, before expireTime. The link holds a secret
   * for that user's browser only: do not log it.
   */
  createConnectSession(opts: ConnectSessionOptions): Promise<{ url: string; expireTime?: Date }> {
    return this.call(async () => {
      const r = await this.svc.createConnectSession({
        owner: opts.owner, tenant: opts.tenant ?? "", providers: opts.providers ?? [], returnTo: opts.returnTo ?? "",
        allowDisconnect: opts.allowDisconnect ?? false, appMetadata: opts.appMetadata ?? {},
        ttl: opts.ttlMs !== undefined ? durationFromMs(opts.ttlMs) : undefined,
      }, { timeoutMs: this.timeoutMs });
      return { url: r.url, expireTime: date(r.expireTime) };
    });
  }

  /**
   * revokeConnection revokes the grant at the provider and destroys the
   * token material (even when the provider fails: providerError says why).
   * It is idempotent. The sidecar allows it to operator credentials only.
   */
  revokeConnection(connectionId: string, reason = ""): Promise<{ connection?: Connection; providerRevoked: boolean; providerError: string }> {
    return this.call(async () => {
      const r = await this.svc.revokeConnection({ connectionId, reason }, { timeoutMs: this.timeoutMs });
      return {
        connection: r.connection ? toConnection(r.connection) : undefined,
        providerRevoked: r.providerRevoked, providerError: r.providerError,
      };
    });
  }

  /** listProviders lists the configured providers, never their secrets. */
  listProviders(): Promise<{ name: string; kind: string; displayName: string; defaultScopes: string[] }[]> {
    return this.call(async () => {
      const r = await this.svc.listProviders({}, { timeoutMs: this.timeoutMs });
      return r.providers.map((p) => ({ name: p.name, kind: p.kind, displayName: p.displayName, defaultScopes: p.defaultScopes }));
    });
  }

  /** rotateKeys re-seals every record under a new data key (operators only). */
  rotateKeys(): Promise<{ term: number; rewrapped: bigint }> {
    return this.call(async () => {
      const r = await this.admin.rotateKeys({}, { timeoutMs: this.timeoutMs });
      return { term: r.term, rewrapped: r.rewrapped };
    });
  }

  /**
   * watchEvents yields connection events in sequence order, from after
   * afterSequence, then as they happen, until signal aborts or the loop
   * breaks. When the stream ends (the sidecar restarts or is down, or this
   * reader fell behind: SUBSCRIBER_TOO_SLOW) it reconnects, with a growing
   * pause, after the last sequence it yielded, so nothing still retained is
   * missed or repeated. It throws on errors retrying cannot fix
   * (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, ...).
   */
  async *watchEvents(opts: WatchEventsOptions = {}): AsyncGenerator<ConnectionEvent, void, undefined> {
    let after = BigInt(opts.afterSequence ?? 0);
    const maxBackoff = opts.maxBackoffMs ?? 5000;
    let failures = 0;
    while (!opts.signal?.aborted) {
      try {
        for await (const r of this.svc.watchEvents({ afterSequence: after, types: opts.types ?? [] }, { signal: opts.signal })) {
          if (!r.event) continue;
          failures = 0;
          after = r.event.sequence;
          yield toEvent(r.event);
        }
      } catch (err) {
        if (opts.signal?.aborted) return;
        const e = toTokenVaultError(err, this.address, opts.signal);
        const resumable = e.code === "UNAVAILABLE" || e.code === "DEADLINE_EXCEEDED" || e.code === "ABORTED" ||
          e.code === "INTERNAL" && e.reason === "" || e.reason === Reason.SUBSCRIBER_TOO_SLOW;
        if (!resumable) throw e;
        // The sidecar names where to resume; it is never before what we
        // yielded, so take the later of the two.
        const resume = e.metadata["resume_after_sequence"];
        if (resume && /^[0-9]{1,20}$/.test(resume) && BigInt(resume) > after) after = BigInt(resume);
      }
      failures++;
      await sleep(Math.min(maxBackoff, 100 * 2 ** Math.min(failures, 10)) * (0.5 + Math.random() / 2), opts.signal);
    }
  }

  /**
   * fetcher returns a fetch function that sends the connection's access
   * token as "Authorization: Bearer"; if the resource server answers 401 it
   * asks the sidecar for a forced refresh and sends the request once more
   * (a body is buffered for that by cloning the request). A failure to get
   * a token rejects with a TokenVaultError (isReauthRequired: the user must
   * connect again).
   */
  fetcher(conn: ConnectionTarget, opts: Omit<TokenOptions, "forceRefresh" | "signal"> = {}): (input: string | URL | Request, init?: RequestInit) => Promise<Response> {
    return async (input, init) => {
      const req = new Request(input, init);
      const again = req.clone();
      const send = async (r: Request, force: boolean) => {
        const tok = await this.getAccessToken(conn, { ...opts, forceRefresh: force, signal: r.signal });
        r.headers.set("authorization", `Bearer ${tok.accessToken}`);
        return fetch(r);
      };
      const first = await send(req, false);
      if (first.status !== 401) {
        void again.body?.cancel().catch(() => {});
        return first;
      }
      await first.body?.cancel().catch(() => {});
      return send(again, true);
    };
  }

  /** fetch is fetcher(conn)(input, init). */
  fetch(conn: ConnectionTarget, input: string | URL | Request, init?: RequestInit): Promise<Response> {
    return this.fetcher(conn)(input, init);
  }
}
