import { Code, ConnectError } from "@connectrpc/connect";
import { create, createFileRegistry, fromBinary, type DescMessage, type Message } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FieldDescriptorProto_Label, FieldDescriptorProto_Type } from "@bufbuild/protobuf/wkt";

/** The google.rpc.ErrorInfo domain of every tokenvault error. */
export const ERROR_DOMAIN = "tokenvault.dev";

/**
 * The ErrorInfo reasons a sidecar sends (see the package comment of
 * tokenvault.proto for the gRPC code that goes with each).
 */
export const Reason = {
  NOT_CONNECTED: "NOT_CONNECTED",
  NEEDS_REAUTHORIZATION: "NEEDS_REAUTHORIZATION",
  PROVIDER_UNAVAILABLE: "PROVIDER_UNAVAILABLE",
  PROVIDER_MISCONFIGURED: "PROVIDER_MISCONFIGURED",
  UNKNOWN_PROVIDER: "UNKNOWN_PROVIDER",
  INVALID_ARGUMENT: "INVALID_ARGUMENT",
  RETURN_TO_NOT_ALLOWED: "RETURN_TO_NOT_ALLOWED",
  CONFLICT: "CONFLICT",
  RECORD_UNREADABLE: "RECORD_UNREADABLE",
  KEY_TERM_IN_USE: "KEY_TERM_IN_USE",
  UNAUTHENTICATED: "UNAUTHENTICATED",
  PERMISSION_DENIED: "PERMISSION_DENIED",
  RATE_LIMITED: "RATE_LIMITED",
  SUBSCRIBER_TOO_SLOW: "SUBSCRIBER_TOO_SLOW",
  SHUTTING_DOWN: "SHUTTING_DOWN",
  INTERNAL: "INTERNAL",
} as const;

/**
 * The gRPC status code names, as grpc-go and grpcurl spell them
 * ("NOT_FOUND", "UNAVAILABLE", ...).
 */
export type StatusCode =
  | "OK" | "CANCELLED" | "UNKNOWN" | "INVALID_ARGUMENT" | "DEADLINE_EXCEEDED" | "NOT_FOUND"
  | "ALREADY_EXISTS" | "PERMISSION_DENIED" | "RESOURCE_EXHAUSTED" | "FAILED_PRECONDITION"
  | "ABORTED" | "OUT_OF_RANGE" | "UNIMPLEMENTED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS"
  | "UNAUTHENTICATED";

const codeNames: Record<Code, StatusCode> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/**
 * google.rpc.ErrorInfo, the one message of google/rpc/error_details.proto
 * the client needs, described field for field as googleapis defines it so
 * that protobuf-es decodes it (the googleapis protos are not an npm
 * dependency worth its size for one three-field message).
 */
type ErrorInfo = Message<"google.rpc.ErrorInfo"> & {
  reason: string;
  domain: string;
  metadata: { [key: string]: string };
};

const errorInfoSchema = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "google/rpc/error_details.proto",
    package: "google.rpc",
    syntax: "proto3",
    messageType: [{
      name: "ErrorInfo",
      field: [
        { name: "reason", number: 1, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.STRING, jsonName: "reason" },
        { name: "domain", number: 2, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.STRING, jsonName: "domain" },
        { name: "metadata", number: 3, label: FieldDescriptorProto_Label.REPEATED, type: FieldDescriptorProto_Type.MESSAGE, typeName: ".google.rpc.ErrorInfo.MetadataEntry", jsonName: "metadata" },
      ],
      nestedType: [{
        name: "MetadataEntry",
        options: { mapEntry: true },
        field: [
          { name: "key", number: 1, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.STRING, jsonName: "key" },
          { name: "value", number: 2, label: FieldDescriptorProto_Label.OPTIONAL, type: FieldDescriptorProto_Type.STRING, jsonName: "value" },
        ],
      }],
    }],
  }),
  () => undefined,
).getMessage("google.rpc.ErrorInfo") as DescMessage;

/** Options of a TokenVaultError. */
export interface TokenVaultErrorInit {
  code: StatusCode;
  reason?: string;
  metadata?: Record<string, string>;
  cause?: unknown;
}

/**
 * TokenVaultError is every error the client's calls reject with. code is the
 * gRPC status code's name; reason and metadata come from the
 * google.rpc.ErrorInfo the sidecar attaches (domain "tokenvault.dev"); a
 * failure that never reached the sidecar has code "UNAVAILABLE" (or
 * "DEADLINE_EXCEEDED", "CANCELLED") and reason "". The message never holds
 * a token: the sidecar's messages are written to be shown.
 */
export class TokenVaultError extends Error {
  override readonly name = "TokenVaultError";
  readonly code: StatusCode;
  readonly reason: string;
  readonly metadata: Readonly<Record<string, string>>;

  constructor(message: string, init: TokenVaultErrorInit) {
    super(message, init.cause === undefined ? undefined : { cause: init.cause });
    this.code = init.code;
    this.reason = init.reason ?? "";
    this.metadata = Object.freeze({ ...(init.metadata ?? {}) });
  }
}

/**
 * toTokenVaultError turns what a Connect call threw into a TokenVaultError.
 * address names the sidecar in the message of a failure to reach it. A
 * call cancelled while signal (the caller's) was not aborted was cut by
 * the sidecar going away (its HTTP/2 connection closed): UNAVAILABLE.
 */
export function toTokenVaultError(err: unknown, address: string, signal?: AbortSignal): TokenVaultError {
  if (err instanceof TokenVaultError) return err;
  const ce = ConnectError.from(err);
  let info: ErrorInfo | undefined;
  for (const d of ce.details) {
    // IncomingDetail: the type name and the encoded message, as read from
    // grpc-status-details-bin.
    if ("type" in d && d.type === errorInfoSchema.typeName) {
      try {
        const ei = fromBinary(errorInfoSchema, d.value) as ErrorInfo;
        if (ei.domain === ERROR_DOMAIN) info = ei;
      } catch {
        // A detail we cannot decode says nothing we could branch on.
      }
    }
  }
  let code = codeNames[ce.code] ?? "UNKNOWN";
  if (!info && (unreachable(err) || ce.code === Code.Canceled && !signal?.aborted)) code = "UNAVAILABLE";
  let message: string;
  if (!info && code === "UNAVAILABLE") {
    // The sidecar is down, or not at that address: say where we looked.
    message = `tokenvault: sidecar at ${address} is unavailable: ${ce.rawMessage}`;
  } else {
    message = `tokenvault: ${code}${info ? ` (${info.reason})` : ""}: ${ce.rawMessage}`;
  }
  return new TokenVaultError(message, { code, reason: info?.reason, metadata: info?.metadata, cause: err });
}

/**
 * The errors of a connection that never reached a listening sidecar
 * (connect-node reports some of them, e.g. a missing unix socket, as
 * INTERNAL).
 */
const unreachableCodes = new Set(["ECONNREFUSED", "ENOENT", "ECONNRESET", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "ETIMEDOUT", "EACCES", "ENOTSOCK", "EPIPE"]);

function unreachable(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const sys = e as Error & { code?: unknown; syscall?: unknown };
    if (sys.syscall === "connect" || typeof sys.code === "string" && unreachableCodes.has(sys.code)) return true;
  }
  return false;
}

/** errorReason returns err's ErrorInfo reason, or "". */
export function errorReason(err: unknown): string {
  return err instanceof TokenVaultError ? err.reason : "";
}

/**
 * isReauthRequired reports whether the provider rejected the connection's
 * grant (NEEDS_REAUTHORIZATION): retrying is useless, the end user must
 * connect again.
 */
export function isReauthRequired(err: unknown): boolean {
  return errorReason(err) === Reason.NEEDS_REAUTHORIZATION;
}

/**
 * isNotConnected reports whether there is no such connection, or it was
 * revoked (NOT_CONNECTED): the end user must connect first.
 */
export function isNotConnected(err: unknown): boolean {
  return errorReason(err) === Reason.NOT_CONNECTED;
}

/**
 * retryAfterMs returns how long to wait before retrying, in milliseconds,
 * if the sidecar said (metadata retry_after_seconds of RATE_LIMITED and
 * PROVIDER_UNAVAILABLE), else undefined.
 */
export function retryAfterMs(err: unknown): number | undefined {
  if (!(err instanceof TokenVaultError)) return undefined;
  const s = err.metadata["retry_after_seconds"];
  if (s === undefined || !/^[0-9]{1,9}$/.test(s)) return undefined;
  return Number(s) * 1000;
}
