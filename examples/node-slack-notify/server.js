// Runs the example: see README.md.
import { TokenVaultClient } from "@tokenvault/client";
import { createApp } from "./app.js";

const env = process.env;
const port = Number(env.PORT ?? 3000);
const secrets = (env.TOKENVAULT_WEBHOOK_SECRET ?? "").split(/[\s,]+/).filter(Boolean);
if (secrets.length === 0) {
  console.error("TOKENVAULT_WEBHOOK_SECRET is required (whsec_...; several, comma-separated, while rotating)");
  process.exit(2);
}
const app = createApp({
  tokenvault: new TokenVaultClient({ address: env.TOKENVAULT_ADDR ?? "127.0.0.1:7070", apiKey: env.TOKENVAULT_API_KEY }),
  webhookSecrets: secrets,
  appURL: env.APP_URL ?? `http://127.0.0.1:${port}`,
  slackAPI: env.SLACK_API,
});
const host = env.HOST ?? "127.0.0.1";
// Express 5 hands a failure to listen (a port already taken) to this
// callback rather than throwing it.
const server = app.listen(port, host, (err) => {
  if (err) {
    console.error(`cannot listen on ${host}:${port}: ${err.code ?? err.message}`);
    process.exit(1);
  }
  console.log(`listening on ${host}:${port}`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)));
