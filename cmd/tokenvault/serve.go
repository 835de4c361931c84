package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/tokenvault/tokenvault/cmd/tokenvault/internal/execmem"
	"github.com/tokenvault/tokenvault/cmd/tokenvault/internal/hugestart"
	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/server/gcgoal"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/seal"
)

var errUsage = errors.New("usage")

// servingGC is how the garbage collector runs once the sidecar serves,
// unless GOGC is set (gcgoal.Sidecar says why).
var servingGC = gcgoal.Sidecar

// startGOGC is the garbage collector's target percentage while the
// sidecar starts, unless GOGC is set. A start allocates little but what
// stays (above all the resident connections): collecting at GOGC 50
// from the runtime's smallest heap marked the growing set again at every
// 50% of growth (about eight cycles on the way to 100,000 connections, a
// seventh of the start's CPU; in dev mode a sixth). It holds while the
// connections load beside serving (token reads allocate little); the
// load's end starts servingGC, and freeOSAfter later FreeOSMemory
// collects once and hands back what is free (awaitLoad).
const startGOGC = 400

// freeOSAfter is how long after the load the start's garbage is handed
// back.
const freeOSAfter = 500 * time.Millisecond

// startingGC sets startGOGC unless the environment sets GOGC; the returned
// func starts servingGC (likewise), and the func it returns stops it. A
// memory limit (GOMEMLIMIT) holds throughout.
func startingGC(env func(string) string) (serving func() (stop func())) {
	if env("GOGC") != "" {
		return func() func() { return func() {} }
	}
	debug.SetGCPercent(startGOGC)
	return func() func() { return gcgoal.Start(servingGC) }
}

type serveFlags struct {
	config, grpcAddr, publicAddr, healthAddr, metricsAddr, httpAddr string
	publicURL, dataDir, logLevel, readyFile, masterKeyFile          string
	dev, allowNonLoopback                                           bool
	devTokenLifetime                                                time.Duration
}

func serve(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	fs.StringVar(&f.config, "config", "", "YAML config file")
	fs.BoolVar(&f.dev, "dev", false, "dev mode: no config needed; local data dir, generated master key, built-in sandbox provider")
	fs.StringVar(&f.grpcAddr, "grpc-addr", "", "gRPC API listen address, loopback or unix:///path (default "+defaultGRPCAddr+")")
	fs.StringVar(&f.publicAddr, "public-addr", "", "public HTTP listen address: the OAuth callback, for browsers (default "+defaultPublicAddr+")")
	fs.StringVar(&f.healthAddr, "health-addr", "", "health listen address: /healthz, /readyz, gRPC health (default "+defaultHealthAddr+")")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "metrics listen address: /metrics (default "+defaultMetricsAddr+")")
	fs.StringVar(&f.httpAddr, "http-addr", "", "deprecated: use --public-addr")
	fs.StringVar(&f.publicURL, "public-url", "", "the public listener's URL as browsers reach it (default http://<public-addr>)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory of the bbolt file (dev default .tokenvault-dev)")
	fs.StringVar(&f.masterKeyFile, "master-key-file", "", "file holding the 32-byte master key (or set $TOKENVAULT_MASTER_KEY)")
	fs.BoolVar(&f.allowNonLoopback, "allow-non-loopback", false, "allow listening on non-loopback addresses")
	fs.StringVar(&f.logLevel, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&f.readyFile, "ready-file", "", "write the listening addresses as JSON to this file once serving")
	fs.DurationVar(&f.devTokenLifetime, "dev-token-lifetime", time.Hour, "dev mode: access-token lifetime of the sandbox provider")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve takes no arguments, got %q\n", fs.Args())
		return errUsage
	}

	serving := startingGC(env)
	cfg := &Config{}
	if f.config != "" {
		var err error
		if cfg, err = loadConfig(f.config); err != nil {
			return err
		}
	} else if !f.dev {
		return errors.New("no --config given; run 'tokenvault serve --dev' to try it with no configuration")
	}
	// Flags override the file.
	deprecated, err := resolveListeners(cfg, f)
	if err != nil {
		return err
	}
	cfg.PublicURL = cmp.Or(f.publicURL, cfg.PublicURL)
	cfg.DataDir = cmp.Or(f.dataDir, cfg.DataDir)
	cfg.MasterKeyFile = cmp.Or(f.masterKeyFile, cfg.MasterKeyFile)
	cfg.MasterKeyEnv = cmp.Or(cfg.MasterKeyEnv, "TOKENVAULT_MASTER_KEY")
	cfg.LogLevel = cmp.Or(f.logLevel, cfg.LogLevel, "info")
	cfg.AllowNonLoopback = cfg.AllowNonLoopback || f.allowNonLoopback
	if f.dev {
		cfg.DataDir = cmp.Or(cfg.DataDir, ".tokenvault-dev")
	}
	etcdStore := cfg.Store != nil && cfg.Store.Kind == "etcd"
	if cfg.DataDir == "" && !etcdStore {
		return errors.New("data_dir is not set")
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("log_level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	if deprecated != "" {
		log.Warn(deprecated)
	}

	if err := checkAPIAddr(cfg.GRPCAddr); err != nil {
		return err
	}
	for _, a := range []string{cfg.PublicAddr, cfg.HealthAddr, cfg.MetricsAddr} {
		if err := checkLoopback(a, cfg.AllowNonLoopback); err != nil {
			return err
		}
	}
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	mk, err := masterKey(cfg, f.dev, env, log)
	if err != nil {
		return err
	}
	if err := checkFileModes(cfg.DataDir, filepath.Join(cfg.DataDir, "tokenvault.db"), cfg.MasterKeyFile, f.dev, log); err != nil {
		return err
	}
	store, err := openStore(ctx, cfg.Store, cfg.DataDir, env)
	if err != nil {
		return err
	}
	defer store.Close()
	kr, err := vault.OpenKeyring(ctx, store, mk)
	if err != nil {
		return err
	}
	log.Info("keyring open", "master_key_id", mk.ID(), "key_term", kr.Term(), "keyring_generation", kr.Generation())

	gl, err := listen(cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("grpc listen: %w", err)
	}
	defer gl.Close()
	hl, err := listen(cfg.PublicAddr)
	if err != nil {
		return fmt.Errorf("public listen: %w", err)
	}
	defer hl.Close()
	healthL, err := listen(cfg.HealthAddr)
	if err != nil {
		return fmt.Errorf("health listen: %w", err)
	}
	defer healthL.Close()
	metricsL, err := listen(cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listen: %w", err)
	}
	defer metricsL.Close()
	httpBase := "http://" + hl.Addr().String()
	cfg.PublicURL = strings.TrimSuffix(cmp.Or(cfg.PublicURL, httpBase), "/")

	extraHTTP := map[string]http.Handler{}
	provs, err := buildProviders(cfg, env)
	if err != nil {
		return err
	}
	if f.dev {
		sb, h, err := sandboxProvider(cfg.PublicURL, httpBase, f.devTokenLifetime)
		if err != nil {
			return err
		}
		if _, taken := provs["sandbox"]; !taken {
			provs["sandbox"] = sb
			extraHTTP["/sandbox/"] = h
		}
		if len(cfg.ReturnTo) == 0 {
			cfg.ReturnTo = []string{"http://127.0.0.1/", "http://localhost/"}
		}
	}
	pageCfg, err := connectPageConfig(cfg, provs)
	if err != nil {
		return err
	}
	if _, configured := cfg.Providers["sandbox"]; f.dev && !configured {
		devSandboxPage(&pageCfg)
	}
	vprovs := make(map[string]vault.Provider, len(provs))
	var infos []providers.Info
	known := make(map[string]bool, len(provs))
	for name, p := range provs {
		vprovs[name] = server.AdaptProvider(p)
		infos = append(infos, p.Info())
		known[name] = true
	}
	var devKeys []server.APIKey
	var devKeyPaths []string
	if f.dev {
		if devKeys, devKeyPaths, err = devAPIKeys(cfg.DataDir); err != nil {
			return err
		}
	}
	auth, err := buildAuth(cfg.Auth, devKeys, known, env)
	if err != nil {
		return err
	}
	if len(devKeys) == 0 && len(cfg.Auth.APIKeys) == 0 && (cfg.Auth.UnixSocket == nil || len(cfg.Auth.UnixSocket.Peers) == 0) {
		log.Error("no credentials configured (auth.api_keys, auth.unix_socket.peers): every call but health checks will be refused")
	}
	metrics := server.NewMetrics()
	// The connections load beside serving (a token is read from its
	// record meanwhile), from when the server serves (loadAfter): begun
	// here, the load took one of two cores from the start. A failed load
	// stops serving, with its error.
	ctx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	loadAfter := make(chan struct{})
	v, err := vault.Open(ctx, vault.Config{
		Store: store, Keyring: kr, Providers: vprovs,
		ReturnTo: cfg.ReturnTo, DefaultReturnTo: cfg.DefaultReturnTo,
		StateTTL: cfg.StateTTL, DefaultMinValid: cfg.DefaultMinValid, Logger: log,
		StartURL:        server.StartURL(cfg.PublicURL),
		RefreshPolicies: refreshPolicies(cfg), Failpoint: failpoint(env, log),
		OnRefresh: metrics.ObserveRefresh, FencedCallTimeout: fencedCallTimeout(store),
		LoadInBackground: true, LoadAfter: loadAfter,
	})
	if err != nil {
		return err
	}
	// Replicas on etcd divide the scheduled work between the live members;
	// leaving (after the scheduler stops) hands this one's share over at
	// once.
	var share vault.Share
	var members *etcd.Members
	if es, ok := store.(*etcd.Store); ok {
		if members, err = es.Join(ctx); err != nil {
			return fmt.Errorf("store: join the replicas: %w", err)
		}
		defer members.Leave()
		share = members
	}
	// Closed after the server has stopped (defers run in reverse), so the
	// last calls' records are written, and before the store closes.
	auditLog := audit.New(audit.Config{Store: store, Retention: cfg.Audit.Retention, Logger: log})
	defer auditLog.Close()
	// Loaded before serving: a new endpoint gets every event from here on.
	hooks, err := buildWebhooks(ctx, cfg, v, store, env, log)
	if err != nil {
		return err
	}
	scfg := server.Config{Vault: v, Providers: infos, Logger: log, ExtraHTTP: extraHTTP,
		Auth: auth, Audit: auditLog, Metrics: metrics, Webhooks: hooks, Ready: readyChecks(store, kr, members),
		PublicURL: cfg.PublicURL, ConnectPage: pageCfg}
	if err := server.CheckConnectPage(scfg); err != nil {
		return err
	}
	srv := server.New(scfg)
	srv.AddHealthListener(healthL)
	srv.AddMetricsListener(metricsL)
	if us := cfg.Auth.UnixSocket; us != nil && us.Path != "" {
		ul, err := listenUnixSocket(us)
		if err != nil {
			return err
		}
		defer ul.Close()
		srv.AddGRPCListener(ul)
		log.Info("unix socket", slog.String("path", us.Path), slog.Int("peers", len(us.Peers)))
	}
	// Stopped by the defer, after the server: the last calls' uses count.
	luCtx, stopLU := context.WithCancel(context.WithoutCancel(ctx))
	luDone := make(chan struct{})
	go func() { defer close(luDone); persistLastUsed(luCtx, v, log) }()
	defer func() { stopLU(); <-luDone }()

	bgCtx, stopBG := context.WithCancel(ctx)
	bgDone := make(chan struct{})
	go func() { defer close(bgDone); background(bgCtx, v, share, log) }()
	followDone := make(chan struct{})
	go func() { defer close(followDone); v.Follow(bgCtx) }() // the other replicas' writes, on etcd
	defer func() { stopBG(); <-followDone }()
	defer func() { stopBG(); <-bgDone }() // refreshes under way commit before the store closes
	hooksDone := make(chan struct{})
	go func() { defer close(hooksDone); hooks.Run(bgCtx) }()
	defer func() { stopBG(); <-hooksDone }() // webhook deliveries, and the outbox sweep
	loadDone := make(chan struct{})
	var loadErr error // set before loadDone closes
	go func() { defer close(loadDone); loadErr = awaitLoad(ctx, v, serving, stopServing, log) }()
	defer func() { stopServing(); <-loadDone }()
	log.Info("tokenvault serving",
		slog.String("grpc", gl.Addr().String()), slog.String("json_gateway", gl.Addr().String()), slog.String("public", hl.Addr().String()),
		slog.String("health", healthL.Addr().String()), slog.String("metrics", metricsL.Addr().String()),
		slog.String("public_url", cfg.PublicURL),
		slog.Int("providers", len(provs)), slog.Bool("dev", f.dev))
	if f.dev {
		// Dev mode's keys go to stdout, for the person at the terminal;
		// never to the log.
		log.Warn("dev mode: API keys generated into the data dir; never use them in production",
			slog.String("application", devKeyPaths[0]), slog.String("operator", devKeyPaths[1]))
		fmt.Fprintf(stdout, "tokenvault dev mode\n  gRPC:     %s (and JSON over HTTP/1.1: %s)\n  callback: %s/oauth/callback/{provider}\n  connect page: %s/connect/s/<token> (CreateConnectSession makes the link)\n  sandbox provider: %s/sandbox/\n  metrics:  http://%s/metrics\n  health:   http://%s/readyz\n"+
			"  application API key: %s   (%s)\n  operator API key:    %s   (%s)\n"+
			"  try: export TOKENVAULT_API_KEY=$(cat %s)\n       grpcurl -plaintext -H \"authorization: Bearer $TOKENVAULT_API_KEY\" -d '{\"owner\":\"alice\",\"provider\":\"sandbox\"}' %s tokenvault.v1.TokenVaultService/StartConnect\n",
			gl.Addr(), curlHint(gl.Addr()), cfg.PublicURL, cfg.PublicURL, cfg.PublicURL, metricsL.Addr(), healthL.Addr(),
			devKeys[0].Key, devKeyPaths[0], devKeys[1].Key, devKeyPaths[1], devKeyPaths[1], gl.Addr())
	}
	if f.readyFile != "" {
		b, _ := json.Marshal(map[string]string{"grpc_addr": gl.Addr().String(), "public_addr": hl.Addr().String(),
			"health_addr": healthL.Addr().String(), "metrics_addr": metricsL.Addr().String(), "public_url": cfg.PublicURL})
		if err := os.WriteFile(f.readyFile, b, 0o600); err != nil {
			return fmt.Errorf("ready file: %w", err)
		}
	}
	close(loadAfter) // Serve accepts at once: the listeners are open
	err = srv.Serve(ctx, gl, hl, 10*time.Second)
	log.Info("tokenvault stopped")
	stopServing()
	if <-loadDone; loadErr != nil {
		return loadErr
	}
	return err
}

// awaitLoad waits for v's connections to load. Loaded: it logs so, runs
// the serving GC (serving) until ctx ends, and hands the load's garbage back to
// the OS soon, but not on the way to the first calls (a full collection:
// tens of ms of CPU with 100,000 connections). Failed while serving: it
// logs why, stops serving (stop) and returns the error, for serve to
// return.
func awaitLoad(ctx context.Context, v *vault.Vault, serving func() (stop func()), stop func(), log *slog.Logger) error {
	select {
	case <-v.Loaded():
	case <-ctx.Done():
		<-v.Loaded() // the load ends with ctx
	}
	if err := v.LoadErr(); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while loading
		}
		log.Error("loading the connections failed; stopping", slog.String("err", err.Error()))
		stop()
		return err
	}
	defer serving()() // until serve stops
	log.Info("connections loaded", slog.Int("connections", v.Len()), slog.Int("unreadable", v.UnreadableCount()),
		slog.Duration("took", v.LoadDuration()))
	t := time.NewTimer(freeOSAfter)
	defer t.Stop()
	select {
	case <-t.C:
		// The start is over: no more huge pages on its heap chunk, before
		// the collection below splits those it has.
		hugestart.End()
		debug.FreeOSMemory()
		// After that collection (whose stack scans read the binary's
		// tables), the executable's read-only pages leave the resident
		// set too: by then the start has touched most of the binary's
		// code and read-only data, about three quarters of a dev-mode
		// sidecar's resident memory, though serving reads little of it
		// again. They stay in the page cache; what serving touches is
		// mapped back with a minor fault.
		releaseExecutable(log)
		<-ctx.Done()
	case <-ctx.Done():
	}
	return nil
}

// releaseExecutable drops the executable's read-only pages from the
// resident set (cmd/tokenvault/internal/execmem). A failure costs memory,
// not service: it
// is logged.
func releaseExecutable(log *slog.Logger) {
	n, err := execmem.Release()
	if err != nil {
		log.Warn("release the executable's read-only pages", slog.String("err", err.Error()))
		return
	}
	log.Debug("released the executable's read-only pages", slog.Int64("resident_bytes", n))
}

// curlHint is a curl command for the JSON gateway on the API listener a.
func curlHint(a net.Addr) string {
	if a.Network() == "unix" {
		return "curl --unix-socket " + a.String() + " http://tokenvault/v1/providers"
	}
	return "curl http://" + a.String() + "/v1/providers"
}

// The listeners' default addresses: all loopback.
const (
	defaultGRPCAddr    = "127.0.0.1:7070"
	defaultPublicAddr  = "127.0.0.1:7071"
	defaultHealthAddr  = "127.0.0.1:7072"
	defaultMetricsAddr = "127.0.0.1:7073"
)

// resolveListeners sets cfg's listen addresses from the flags, the file and
// the defaults, in that order. The deprecated http_addr (--http-addr) stands
// for public_addr; resolveListeners then returns the message to log, and
// refuses both names at once.
func resolveListeners(cfg *Config, f serveFlags) (deprecated string, err error) {
	if f.httpAddr != "" {
		if f.publicAddr != "" {
			return "", errors.New("--http-addr and --public-addr both set: --http-addr is the deprecated name of --public-addr; keep only --public-addr")
		}
		f.publicAddr = f.httpAddr
		deprecated = "--http-addr"
	}
	if cfg.HTTPAddr != "" {
		if cfg.PublicAddr != "" {
			return "", errors.New("config: http_addr and public_addr both set: http_addr is the deprecated name of public_addr; keep only public_addr")
		}
		cfg.PublicAddr = cfg.HTTPAddr
		deprecated = cmp.Or(deprecated, "http_addr")
	}
	cfg.GRPCAddr = cmp.Or(f.grpcAddr, cfg.GRPCAddr, defaultGRPCAddr)
	cfg.PublicAddr = cmp.Or(f.publicAddr, cfg.PublicAddr, defaultPublicAddr)
	cfg.HealthAddr = cmp.Or(f.healthAddr, cfg.HealthAddr, defaultHealthAddr)
	cfg.MetricsAddr = cmp.Or(f.metricsAddr, cfg.MetricsAddr, defaultMetricsAddr)
	if deprecated != "" {
		deprecated = fmt.Sprintf("%s is deprecated and will be removed: it now sets public_addr (--public-addr), the OAuth callback's listener, which serves nothing else. "+
			"/healthz and /readyz moved to health_addr (%s) and /metrics to metrics_addr (%s): point probes and scrapers there",
			deprecated, cfg.HealthAddr, cfg.MetricsAddr)
	}
	return deprecated, nil
}

// readyChecks are what /readyz (and the TokenVaultService's gRPC health
// status) check: the store answers a read, and the keyring's data keys are
// loaded. Replicas on etcd (members set) are ready while they hold their
// membership lease and etcd answered its keepalive within two thirds of
// the lock TTL: past that, a fence taken now would not outlive a provider
// call, so resident tokens can no longer be kept fresh. A single slow read
// does not make a replica unready.
func readyChecks(store vault.Store, kr *seal.Keyring, members *etcd.Members) []server.ReadyCheck {
	storeCheck := server.ReadyCheck{Name: "store", Check: func(ctx context.Context) error {
		// An absent key: any answer but "not found" means the store
		// cannot serve.
		if _, _, err := store.Get(ctx, "readyz/probe"); err != nil && !errors.Is(err, vault.ErrNotFound) {
			return fmt.Errorf("store read: %w", err)
		}
		return nil
	}}
	if es, ok := store.(*etcd.Store); ok && members != nil {
		storeCheck.Check = func(context.Context) error {
			return members.Healthy(es.LockTTL() * 2 / 3)
		}
	}
	return []server.ReadyCheck{
		storeCheck,
		{Name: "keyring", Check: func(context.Context) error {
			if kr.Term() == 0 {
				return errors.New("no data key loaded")
			}
			return nil
		}},
	}
}

// background resolves interrupted refreshes left by a crash, then runs
// the refresh scheduler and sweeps expired connect flows every minute until
// ctx is done; it returns when the scheduler's refreshes have committed.
func background(ctx context.Context, v *vault.Vault, share vault.Share, log *slog.Logger) {
	if n, err := v.RecoverInterrupted(ctx); err != nil {
		log.Error("recover interrupted refreshes", slog.String("err", err.Error()))
	} else if n > 0 {
		log.Warn("resolved interrupted refreshes", slog.Int("count", n))
	}
	sched := make(chan struct{})
	go func() { defer close(sched); runScheduler(ctx, v, share, log) }()
	defer func() { <-sched }()
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := v.SweepStates(ctx); err != nil && ctx.Err() == nil {
				log.Warn("sweep connect states", slog.String("err", err.Error()))
			}
		}
	}
}

// persistLastUsed writes connections' last-used times to the store every
// minute (those that moved by more than a minute), and all of them when ctx
// is done, so that they survive a restart.
func persistLastUsed(ctx context.Context, v *vault.Vault, log *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := v.FlushLastUsed(fctx, 0); err != nil {
				log.Warn("persist last-used times", slog.String("err", err.Error()))
			}
			return
		case <-t.C:
			if _, err := v.FlushLastUsed(ctx, time.Minute); err != nil && ctx.Err() == nil {
				log.Warn("persist last-used times", slog.String("err", err.Error()))
			}
		}
	}
}

// listenUnixSocket listens on the configured unix socket with its mode.
func listenUnixSocket(us *UnixSocketConfig) (net.Listener, error) {
	mode, err := unixSocketMode(us.Mode)
	if err != nil {
		return nil, err
	}
	if runtime.GOOS != "linux" && len(us.Peers) > 0 {
		return nil, errors.New("auth: unix_socket peers need SO_PEERCRED (Linux)")
	}
	if fi, err := os.Lstat(us.Path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(us.Path) // a stale socket of an earlier run
	}
	l, err := net.Listen("unix", us.Path)
	if err != nil {
		return nil, fmt.Errorf("unix socket: %w", err)
	}
	if err := os.Chmod(us.Path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("unix socket: %w", err)
	}
	return l, nil
}

// masterKey reads the master key from its file or environment variable. In
// dev mode with neither, it generates one into the data dir (0600).
func masterKey(cfg *Config, dev bool, env func(string) string, log *slog.Logger) (seal.MasterKey, error) {
	if cfg.MasterKeyFile != "" {
		b, err := os.ReadFile(cfg.MasterKeyFile)
		if err != nil {
			return seal.MasterKey{}, fmt.Errorf("master key: %w", err)
		}
		return seal.ParseMasterKey(b)
	}
	if s := env(cfg.MasterKeyEnv); s != "" {
		return seal.ParseMasterKey([]byte(s))
	}
	if !dev {
		return seal.MasterKey{}, fmt.Errorf("no master key: set master_key_file or $%s", cfg.MasterKeyEnv)
	}
	path := filepath.Join(cfg.DataDir, "master.key")
	if b, err := os.ReadFile(path); err == nil {
		return seal.ParseMasterKey(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return seal.MasterKey{}, fmt.Errorf("master key: %w", err)
	}
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		return seal.MasterKey{}, err
	}
	if err := os.WriteFile(path, []byte(mk.Encode()+"\n"), 0o600); err != nil {
		return seal.MasterKey{}, fmt.Errorf("write generated master key: %w", err)
	}
	log.Warn("dev mode: generated a master key beside the data; anyone who can read the data dir can open the vault. Never use this in production.",
		slog.String("path", path))
	return mk, nil
}
