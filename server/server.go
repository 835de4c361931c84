// Package server serves a vault over gRPC (TokenVaultService, AdminService,
// health, reflection) and HTTP, on listeners split by audience:
//
//   - the API (gRPC, and the JSON gateway for HTTP/1.1 clients): loopback
//     or a unix socket, every call authenticated;
//   - public (HTTP): what browsers reach through an ingress, the OAuth
//     callback (and in dev mode the sandbox provider), nothing else;
//   - health (HTTP and gRPC health on one port): /healthz, /readyz and
//     grpc.health.v1 for the kubelet;
//   - metrics (HTTP): /metrics for Prometheus.
//
// Every call passes the access check of auth.go (credential, role, rate
// limit, provider limit) before its handler, and audited calls are recorded
// (audit.Log). It is the one place domain errors become gRPC statuses.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/server/connectpage"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// Config configures a Server.
type Config struct {
	Vault *vault.Vault
	// Providers are the configured providers, described by ListProviders.
	Providers []providers.Info
	Logger    *slog.Logger
	// DefaultDeadline applies to calls that arrive without a deadline;
	// default 30 seconds.
	DefaultDeadline time.Duration
	// MaxRecvMsgSize bounds a request; default 1 MiB.
	MaxRecvMsgSize int
	// MaxConcurrentStreams bounds concurrent calls per connection; default
	// 1000.
	MaxConcurrentStreams uint32
	// PublicURL is the public listener's URL as browsers reach it, without
	// a trailing slash: the connect page's links (CreateConnectSession)
	// and its cookies' Secure flag derive from it. The vault's start URLs
	// (vault.Config.StartURL) must point here too (StartURL). Empty: the
	// connect page answers on the public listener as http://127.0.0.1,
	// and CreateConnectSession is refused.
	PublicURL string
	// ConnectPage configures the connect page: the application's name,
	// logo and theme colour, popup origins, frame ancestors, and how each
	// provider is presented (a provider without an entry is shown with its
	// display name and default scopes). PublicURL, Logger and, when it is
	// empty, Providers are filled in.
	ConnectPage connectpage.Config
	// ExtraHTTP, if set, is mounted on the public listener under its
	// pattern (dev mode mounts the sandbox provider this way). Only what a
	// browser must reach belongs there.
	ExtraHTTP map[string]http.Handler
	// Ready lists what /readyz checks, in order (health.go). The server
	// adds none of its own beyond "not shutting down": cmd wires the store
	// and the keyring, and a store shared by replicas adds its own.
	Ready []ReadyCheck
	// GRPCOptions are appended to the server's options (tests, benchmarks).
	GRPCOptions []grpc.ServerOption
	// Register, if set, registers further services on the gRPC server
	// (benchmarks register an empty service beside the real one).
	Register func(*grpc.Server)
	// RegisteredRoles gives the role each method of the services added by
	// Register needs ("/pkg.Service/Method" -> role). Methods in neither
	// this nor the access table (auth.go) are refused.
	RegisteredRoles map[string]Role

	// Auth authenticates callers. Nil refuses every call but health
	// checks: the server never runs open.
	Auth *Auth
	// Audit, if set, records audited calls (see the access table) and
	// connect callbacks, and serves AdminService.ListAuditEvents.
	Audit *audit.Log
	// Metrics, if set, counts calls and is served at /metrics on the
	// metrics listener (AddMetricsListener).
	Metrics *Metrics
	// Webhooks, if set, has its delivery counters exported with Metrics
	// (events.go).
	Webhooks *webhook.Deliverer
	// Now is the clock of rate limits; default time.Now.
	Now func() time.Time
}

// MaxHeaderListSize bounds the metadata (HTTP/2 header list) of one call:
// a stream whose headers are larger is reset before any of it is kept or
// any handler runs. An API key and the usual headers take well under 1 KiB.
const MaxHeaderListSize = 16 << 10

// A Server is the sidecar's gRPC and HTTP front.
type Server struct {
	cfg    Config
	log    *slog.Logger
	grpc   *grpc.Server
	health *health.Server
	public *http.Server // the OAuth callback, the connect page and ExtraHTTP, for browsers
	page   *connectpage.Handler
	api    *http.Server // the JSON gateway on the API listeners (gateway.go)
	extra  []net.Listener

	healthHTTP *http.Server // /healthz, /readyz and grpc.health.v1 (health.go)
	healthGRPC *grpc.Server // the health service alone, served through healthHTTP
	healthL    []net.Listener
	metrics    *http.Server
	metricsL   []net.Listener

	stopping chan struct{} // closed when Serve starts to stop: ends WatchEvents streams
	stopOnce sync.Once
}

// New builds a Server; Serve starts it.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DefaultDeadline <= 0 {
		cfg.DefaultDeadline = 30 * time.Second
	}
	if cfg.MaxRecvMsgSize <= 0 {
		cfg.MaxRecvMsgSize = 1 << 20
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = 1000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger, health: health.NewServer(), stopping: make(chan struct{})}
	providerNames := make([]string, 0, len(cfg.Providers))
	for _, p := range cfg.Providers {
		providerNames = append(providerNames, p.Name)
	}
	cfg.Metrics.attach(cfg.Vault, cfg.Audit, providerNames)
	if cfg.Metrics != nil && cfg.Webhooks != nil {
		if err := cfg.Metrics.Register(webhookCollector{cfg.Webhooks}); err != nil {
			s.log.Warn("webhook metrics not registered", slog.String("err", err.Error()))
		}
	}
	g := &gate{rules: rulesWith(cfg.RegisteredRoles), auth: cfg.Auth, vault: cfg.Vault,
		audit: cfg.Audit, metrics: cfg.Metrics, now: cfg.Now}

	panicHandler := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		// The panic value may hold anything, secrets included: it goes
		// nowhere. The stack says where.
		s.log.LogAttrs(ctx, slog.LevelError, "panic in handler", slog.String("stack", string(debug.Stack())))
		return statusWithReason(codes.Internal, ReasonInternal, "internal error", nil)
	})
	calls := callLogger{log: s.log}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(panicHandler),
			calls.unary,
			g.unary,
			deadlineUnary(cfg.DefaultDeadline),
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(panicHandler),
			calls.stream,
			g.stream,
		),
		// Plaintext, plus the peer's uid on unix sockets (auth.go).
		grpc.Creds(PeerCredentials()),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		// Metadata arrives before any credential is checked: without a
		// bound (grpc's default is 16 MiB) a caller with no key makes the
		// server hold megabytes per stream.
		grpc.MaxHeaderListSize(MaxHeaderListSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ConnectionTimeout(10 * time.Second),
		// A pool of goroutines serves the calls: each keeps the stack a
		// call grew to, where a goroutine per call grew (copied) its
		// stack on every call through the interceptors. A call that
		// finds every worker busy still gets a goroutine of its own.
		grpc.NumStreamWorkers(uint32(4 * runtime.GOMAXPROCS(0))),
	}
	opts = append(opts, cfg.GRPCOptions...)
	s.grpc = grpc.NewServer(opts...)

	infos := make([]*tvv1.Provider, 0, len(cfg.Providers))
	for _, p := range cfg.Providers {
		infos = append(infos, &tvv1.Provider{
			Name: p.Name, Kind: p.Kind, DisplayName: p.DisplayName, DefaultScopes: p.DefaultScopes,
			Pkce: p.PKCE, SupportsRefresh: p.Refresh, SupportsRevocation: p.Revocation, SupportsValidation: p.Validation,
			ClientId: p.ClientID, RedirectUrl: p.RedirectURL,
		})
	}
	tvv1.RegisterTokenVaultServiceServer(s.grpc, &tokenService{v: cfg.Vault, providers: infos, publicURL: cfg.PublicURL, stopping: s.stopping})
	tvv1.RegisterAdminServiceServer(s.grpc, &adminService{v: cfg.Vault, audit: cfg.Audit})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	if cfg.Register != nil {
		cfg.Register(s.grpc)
	}

	page, err := s.connectPage()
	if err != nil {
		panic(err) // cmd checks the page's configuration first (CheckConnectPage)
	}
	s.page = page
	s.public = newHTTPServer(s.publicMux(), s.log)
	s.healthGRPC = grpc.NewServer(grpc.MaxRecvMsgSize(4<<10), grpc.MaxHeaderListSize(8<<10), grpc.ConnectionTimeout(10*time.Second))
	healthpb.RegisterHealthServer(s.healthGRPC, s.health)
	s.healthHTTP = newHealthHTTPServer(s.healthHandler(), s.log)
	metricsMux := http.NewServeMux()
	if cfg.Metrics != nil {
		metricsMux.Handle("GET /metrics", cfg.Metrics.Handler())
	}
	s.metrics = newHTTPServer(metricsMux, s.log)
	s.api = &http.Server{
		Handler:           newGateway(s.grpc, cfg.MaxRecvMsgSize, s.log),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderListSize,
		ConnContext:       gatewayConnContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	return s
}

// GRPC returns the gRPC server, for tests that serve it on bufconn.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// publicMux is the public listener's routes: what browsers reach through
// the application's ingress, and nothing else. Handlers a browser needs
// (the connect pages) are added here; anything for operators, probes or
// scrapers goes on another listener.
func (s *Server) publicMux() *http.ServeMux {
	mux := http.NewServeMux()
	cb := &callbackHandler{v: s.cfg.Vault, page: s.page, log: s.log, audit: s.cfg.Audit, failures: &failureBudget{}, now: s.cfg.Now}
	if s.cfg.Metrics != nil {
		if err := s.cfg.Metrics.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "tokenvault_callback_failures_total",
			Help: "OAuth callbacks that failed (forged or spent state, denied consent, provider errors), all counted even when not logged one by one.",
		}, func() float64 { return float64(cb.failures.Total()) })); err != nil {
			s.log.Warn("callback metrics not registered", slog.String("err", err.Error()))
		}
	}
	mux.Handle("GET /oauth/callback/{provider}", cb)
	s.page.Register(mux)
	for pattern, h := range s.cfg.ExtraHTTP {
		mux.Handle(pattern, h)
	}
	return mux
}

// StartURL returns the start URL of a flow on the public listener at
// publicURL: set it as the vault's Config.StartURL.
func StartURL(publicURL string) func(flow string) string {
	return func(flow string) string { return connectpage.StartURL(publicURL, flow) }
}

// CheckConnectPage reports whether cfg's connect page would start.
func CheckConnectPage(cfg Config) error {
	_, err := (&Server{cfg: cfg, log: slog.New(slog.DiscardHandler)}).connectPage()
	return err
}

// connectPage builds the connect page over the vault.
func (s *Server) connectPage() (*connectpage.Handler, error) {
	pc := s.cfg.ConnectPage
	pc.PublicURL = strings.TrimSuffix(cmp.Or(s.cfg.PublicURL, "http://127.0.0.1"), "/")
	pc.Logger = s.log
	if pc.Now == nil {
		pc.Now = s.cfg.Now
	}
	if len(pc.Providers) == 0 {
		for _, p := range s.cfg.Providers {
			pp := connectpage.Provider{Name: p.Name, DisplayName: p.DisplayName}
			for _, sc := range p.DefaultScopes {
				pp.Scopes = append(pp.Scopes, connectpage.Scope{Name: sc, Words: sc})
			}
			pc.Providers = append(pc.Providers, pp)
		}
	}
	return connectpage.New(pc, &pageBackend{v: s.cfg.Vault, audit: s.cfg.Audit})
}

// newHTTPServer bounds what a client may hold of a listener.
func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// PublicHandler returns the public listener's handler (OAuth callback,
// ExtraHTTP).
func (s *Server) PublicHandler() http.Handler { return s.public.Handler }

// HealthHandler returns the health listener's handler: /healthz, /readyz,
// and grpc.health.v1 for HTTP/2 requests of content type application/grpc.
func (s *Server) HealthHandler() http.Handler { return s.healthHTTP.Handler }

// MetricsHandler returns the metrics listener's handler (/metrics).
func (s *Server) MetricsHandler() http.Handler { return s.metrics.Handler }

// AddGRPCListener makes Serve serve gRPC on l too (the unix socket whose
// peers are identified by uid). Call it before Serve.
func (s *Server) AddGRPCListener(l net.Listener) { s.extra = append(s.extra, l) }

// AddHealthListener makes Serve serve the health listener's handler on l:
// HTTP/1.1 and cleartext HTTP/2 (h2c, for gRPC health probes). Call it
// before Serve.
func (s *Server) AddHealthListener(l net.Listener) { s.healthL = append(s.healthL, l) }

// AddMetricsListener makes Serve serve /metrics on l. Call it before Serve.
func (s *Server) AddMetricsListener(l net.Listener) { s.metricsL = append(s.metricsL, l) }

// Serve serves the API on gl (and the listeners added by AddGRPCListener),
// the public HTTP routes on pl, and the health and metrics listeners added
// before, until ctx is done; then it stops gracefully: /readyz fails at
// once, and in-flight calls get up to grace to finish before they are cut.
// An API listener serves gRPC and, to clients that speak HTTP/1.1, the JSON
// gateway (gateway.go).
func (s *Server) Serve(ctx context.Context, gl, pl net.Listener, grace time.Duration) error {
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(tvv1.TokenVaultService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	rctx, stopReady := context.WithCancel(ctx)
	defer stopReady()
	go s.followReadiness(rctx)
	apis := append([]net.Listener{gl}, s.extra...)
	errc := make(chan error, 1+2*len(apis)+len(s.healthL)+len(s.metricsL))
	var wg sync.WaitGroup
	for _, l := range apis {
		h2, h1 := splitListener(l, 10*time.Second)
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := s.grpc.Serve(h2); err != nil {
				errc <- fmt.Errorf("grpc: %w", err)
			}
		}()
		go func() {
			defer wg.Done()
			if err := s.api.Serve(h1); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("json gateway: %w", err)
			}
		}()
	}
	serveHTTP := func(name string, hs *http.Server, l net.Listener) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	serveHTTP("public", s.public, pl)
	for _, l := range s.healthL {
		serveHTTP("health", s.healthHTTP, l)
	}
	for _, l := range s.metricsL {
		serveHTTP("metrics", s.metrics, l)
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.stopOnce.Do(func() { close(s.stopping) })
	s.health.Shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	_ = s.public.Shutdown(sctx)
	_ = s.metrics.Shutdown(sctx)
	_ = s.api.Shutdown(sctx)
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
		s.grpc.Stop()
	}
	// Last, so probes see "not ready" while the rest drains.
	s.healthGRPC.Stop() // ends Watch streams, which would hold the shutdown
	_ = s.healthHTTP.Shutdown(sctx)
	wg.Wait()
	for _, l := range apis {
		l.Close() // the split's accept loop; its halves are closed
	}
	return err
}
