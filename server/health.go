package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// A ReadyCheck is one condition of readiness, run by /readyz on every probe.
// Check returns nil when the condition holds; its error is shown to the
// prober (keep it free of secrets) and logged. Checks run in order, each
// with the probe's context bounded to readyTimeout.
//
// cmd wires "store" (the store answers a read) and "keyring" (the data keys
// are loaded); a store shared by several replicas adds a check that it is
// reachable. Liveness (/healthz) runs none of them: a store that is down
// makes the sidecar unready, not dead, so the kubelet does not restart it
// for what a restart cannot fix.
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
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		err := c.Check(ctx)
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
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "not ready", slog.String("check", c.Name), slog.String("err", msg))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, b.String())
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
