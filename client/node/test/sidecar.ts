// A real tokenvault sidecar for the tests: the Go binary, built once per
// test process into a temp dir (or $TOKENVAULT_BIN when the Makefile has
// built it), run as `serve --dev` with a temp data dir on ephemeral ports.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const repoRoot = resolve(fileURLToPath(import.meta.url), "../../../../..");
let built: Promise<string> | undefined;

/** tokenvaultBinary returns the path of a tokenvault binary, building it once. */
export function tokenvaultBinary(): Promise<string> {
  if (process.env.TOKENVAULT_BIN) return Promise.resolve(resolve(process.env.TOKENVAULT_BIN));
  built ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), "tokenvault-bin-"));
    process.on("exit", () => void rm(dir, { recursive: true, force: true }));
    const out = join(dir, "tokenvault");
    await promisify(execFile)("go", ["build", "-o", out, "./cmd/tokenvault"], { cwd: repoRoot, timeout: 600_000 });
    return out;
  })();
  return built;
}

export interface SidecarOptions {
  /** YAML config given with --config, beside --dev. */
  config?: string;
  /** Extra environment of the process (secrets named by the config). */
  env?: Record<string, string>;
  /** The data dir, to restart on the same data; default a new temp dir. */
  dataDir?: string;
  /** The gRPC address; default 127.0.0.1:0. */
  grpcAddr?: string;
}

export interface Sidecar {
  grpcAddr: string;
  /** The public (callback) listener's base URL. */
  publicURL: string;
  appKey: string;
  operatorKey: string;
  dataDir: string;
  logs: () => string;
  /** stop ends the process (SIGTERM; SIGKILL: a crash, nothing said to clients). */
  stop: (signal?: "SIGTERM" | "SIGKILL") => Promise<void>;
}

/** startSidecar starts `tokenvault serve --dev` and waits until it serves. */
export async function startSidecar(opts: SidecarOptions = {}): Promise<Sidecar> {
  const bin = await tokenvaultBinary();
  const dir = await mkdtemp(join(tmpdir(), "tokenvault-test-"));
  const dataDir = opts.dataDir ?? join(dir, "data");
  const readyFile = join(dir, "ready.json");
  const args = ["serve", "--dev", "--data-dir", dataDir, "--grpc-addr", opts.grpcAddr ?? "127.0.0.1:0",
    "--public-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
    "--ready-file", readyFile, "--log-level", "warn"];
  if (opts.config !== undefined) {
    const path = join(dir, "config.yaml");
    await writeFile(path, opts.config, { mode: 0o600 });
    args.push("--config", path);
  }
  let logs = "";
  const child: ChildProcess = spawn(bin, args, {
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? dir, ...opts.env },
    stdio: ["ignore", "ignore", "pipe"],
  });
  child.stderr!.on("data", (b: Buffer) => { logs += b.toString(); });
  const exited = new Promise<number | null>((res) => child.on("exit", (code) => res(code)));
  const stop = async (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(t);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await readFile(readyFile, "utf8").catch(() => "");
    if (r) {
      const ready = JSON.parse(r) as { grpc_addr: string; public_url: string };
      const key = async (f: string) => (await readFile(join(dataDir, f), "utf8")).trim();
      const grpcAddr = ready.grpc_addr.startsWith("/") ? `unix://${ready.grpc_addr}` : ready.grpc_addr;
      return {
        grpcAddr, publicURL: ready.public_url, dataDir,
        appKey: await key("application.key"), operatorKey: await key("operator.key"),
        logs: () => logs, stop,
      };
    }
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`tokenvault serve did not start (exit ${child.exitCode}):\n${logs}`);
    }
    await new Promise((res) => setTimeout(res, 50));
  }
}

/**
 * A Browser follows redirects and keeps cookies per host, as a browser does:
 * the sidecar's start URL binds a flow to the browser with a cookie, and
 * the callback completes only with it. (fetch keeps no cookies.)
 */
export class Browser {
  private jar = new Map<string, Map<string, string>>();

  async get(url: string): Promise<{ status: number; body: string; url: string }> {
    for (let hop = 0; hop < 10; hop++) {
      const u = new URL(url);
      const cookies = [...(this.jar.get(u.host) ?? new Map()).entries()].map(([k, v]) => `${k}=${v}`).join("; ");
      const r = await fetch(url, { redirect: "manual", headers: cookies ? { cookie: cookies } : {} });
      for (const c of r.headers.getSetCookie()) {
        const [pair] = c.split(";");
        const i = pair.indexOf("=");
        if (!this.jar.has(u.host)) this.jar.set(u.host, new Map());
        this.jar.get(u.host)!.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
      }
      const loc = r.headers.get("location");
      if (r.status >= 300 && r.status < 400 && loc) {
        await r.body?.cancel();
        url = new URL(loc, url).toString();
        continue;
      }
      return { status: r.status, body: await r.text(), url };
    }
    throw new Error(`too many redirects from ${url}`);
  }
}

/**
 * completeConnect follows an authorization URL the way a browser would: the
 * start URL binds the flow to this browser, the sandbox provider approves at
 * once and redirects to the sidecar's callback. It returns the final page's
 * status and body.
 */
export async function completeConnect(authorizationUrl: string, browser = new Browser()): Promise<{ status: number; body: string }> {
  const r = await browser.get(authorizationUrl);
  return { status: r.status, body: r.body };
}
