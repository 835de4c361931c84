/**
 * The Node.js client of tokenvault, the sidecar that holds an application's
 * end users' OAuth connections. Get a token by user and provider, start a
 * connect flow, follow connection events, verify webhooks.
 *
 * @example
 * const tv = new TokenVaultClient({ apiKey: process.env.TOKENVAULT_API_KEY });
 * const { accessToken } = await tv.getAccessToken({ owner: "user-17", provider: "slack" });
 */
export * from "./client.js";
export * from "./errors.js";
export * from "./webhook.js";
export * as pb from "./gen/tokenvault/v1/tokenvault_pb.js";
