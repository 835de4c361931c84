package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// A ReadyCheck is one condition of readiness, run by /readyz on every probe.
// Check returns nil when the condition holds; its error is shown to the
// prober (keep it free of secrets) and logged. Checks run in order, each
// with the probe's context bounded to readyTimeout.
//
// cmd wires "store" (the store answers a read; with replicas on etcd: this
// replica still holds its lease, so it can keep resident tokens fresh) and
// "keyring" (the data keys are loaded). The same checks, run every second,
// set the gRPC health status of the TokenVaultService (readiness); the
// overall status "" stays SERVING. Liveness (/healthz, gRPC health "")
// runs none of them: a store that is down makes the sidecar unready, not
// dead, so the kubelet does not restart it for what a restart cannot fix.
type ReadyCheck struct {
	Name  string
	Check func(context.Context) error
}

// readyTimeout bounds each readiness check: a probe must answer before the
// kubelet's own timeout (1 s by default).
const readyTimeout = 800 * time.Millisecond

// healthHandler serves the health listener: /healthz and /readyz over
// HTTP, and grpc.health.v1 for HTTP/2 requests of gRPC's content type (the
// kubelet's grpc probe speaks cleartext HTTP/2 with prior knowledge).
func (s *Server) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			s.healthGRPC.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// readyz answers 200 when the server is not stopping and every ReadyCheck
// passes, 503 otherwise; the body names each check and its result.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ok, report := s.ready(r.Context(), true)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, report)
}

// ready runs the readiness checks: it reports whether all pass, and one
// line per check. With logFailures, failures are logged.
func (s *Server) ready(ctx context.Context, logFailures bool) (bool, string) {
	var b strings.Builder
	ok := true
	select {
	case <-s.stopping:
		ok = false
		b.WriteString("fail serving: shutting down\n")
	default:
		b.WriteString("ok serving\n")
	}
	for _, c := range s.cfg.Ready {
		cctx, cancel := context.WithTimeout(ctx, readyTimeout)
		err := c.Check(cctx)
		cancel()
		if err == nil {
			fmt.Fprintf(&b, "ok %s\n", c.Name)
			continue
		}
		ok = false
		msg := err.Error()
		if len(msg) > 200 {
			msg = msg[:200]
		}
		fmt.Fprintf(&b, "fail %s: %s\n", c.Name, msg)
		if logFailures {
			s.log.LogAttrs(ctx, slog.LevelWarn, "not ready", slog.String("check", c.Name), slog.String("err", msg))
		}
	}
	return ok, b.String()
}

// readyEvery is how often the gRPC health service's readiness (the
// TokenVaultService's status) is checked again.
const readyEvery = time.Second

// followReadiness keeps the gRPC health status of the TokenVaultService
// (readiness, for probes that name it) in step with the ReadyChecks, until
// ctx ends. The overall status "" stays SERVING while the process serves:
// it is liveness, and a store that is down makes the sidecar unready, not
// dead.
func (s *Server) followReadiness(ctx context.Context) {
	t := time.NewTicker(readyEvery)
	defer t.Stop()
	serving := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, report := s.ready(ctx, false)
		if ok == serving || ctx.Err() != nil {
			continue
		}
		serving = ok
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ok {
			st = healthpb.HealthCheckResponse_SERVING
			s.log.LogAttrs(ctx, slog.LevelInfo, "ready again")
		} else {
			s.log.LogAttrs(ctx, slog.LevelWarn, "not ready: gRPC health reports NOT_SERVING for "+tvv1.TokenVaultService_ServiceDesc.ServiceName,
				slog.String("checks", report))
		}
		s.health.SetServingStatus(tvv1.TokenVaultService_ServiceDesc.ServiceName, st)
	}
}

// newHealthHTTPServer serves h over HTTP/1.1 and cleartext HTTP/2, with
// tighter bounds than the other listeners: probes are small and quick.
func newHealthHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	hs := newHTTPServer(h, log)
	hs.ReadTimeout = 10 * time.Second
	hs.WriteTimeout = 10 * time.Second
	hs.MaxHeaderBytes = 8 << 10
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hs.Protocols = &p
	return hs
}
