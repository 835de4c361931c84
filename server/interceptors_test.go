package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/tokenvault/tokenvault/server"
)

// probeSecret is in every probe request; it must never reach a log line.
const probeSecret = "tvk-probe-payload-secret"

// probeDesc is a service registered beside the real ones so that the
// interceptors can be watched on calls whose outcome the test chooses.
// Call's request names the outcome: "ok", "not_found", "internal",
// "deadline" (answers the time left before the context's deadline, or
// "none"), "caller" (answers the caller's name), "wait" (waits for the
// context to end and answers its error) or "wait_derived" (the same with a
// context derived from it).
// Stream sends one message and ends with the same outcomes.
var probeDesc = grpc.ServiceDesc{
	ServiceName: "tokenvault.test.Probe",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/tokenvault.test.Probe/Call"}
			return ic(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return probeOutcome(ctx, req.(*wrapperspb.StringValue).Value)
			})
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		Handler: func(srv any, ss grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			out, err := probeOutcome(ss.Context(), in.Value)
			if err != nil {
				return err
			}
			return ss.SendMsg(out)
		},
	}},
}

func probeOutcome(ctx context.Context, req string) (*wrapperspb.StringValue, error) {
	switch {
	case strings.HasPrefix(req, "not_found"):
		return nil, status.Error(codes.NotFound, "no such thing")
	case strings.HasPrefix(req, "internal"):
		return nil, status.Error(codes.Internal, "it broke")
	case strings.HasPrefix(req, "deadline"):
		d, ok := ctx.Deadline()
		if !ok {
			return wrapperspb.String("none"), nil
		}
		return wrapperspb.String(time.Until(d).String()), nil
	case strings.HasPrefix(req, "wait_derived"):
		dctx, cancel := context.WithTimeout(ctx, time.Hour)
		defer cancel()
		return probeWait(dctx)
	case strings.HasPrefix(req, "caller"):
		return wrapperspb.String(server.CallerFromContext(ctx).Name), nil
	case strings.HasPrefix(req, "wait"):
		return probeWait(ctx)
	}
	return wrapperspb.String("fine"), nil
}

// probeWait waits for ctx to end, or gives up after 10 s with "still
// waiting".
func probeWait(ctx context.Context) (*wrapperspb.StringValue, error) {
	select {
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	case <-time.After(10 * time.Second):
		return wrapperspb.String("still waiting"), nil
	}
}

// syncBuffer is a bytes.Buffer the server's goroutines may write to while
// the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// records returns the JSON log records written so far, and forgets them.
func (s *syncBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, probeSecret) {
			t.Errorf("a log line holds the request payload: %s", line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	s.b.Reset()
	return out
}

// probe is a sidecar server serving the probe service on bufconn and
// logging JSON into logs.
type probe struct {
	lis  *bufconn.Listener
	logs *syncBuffer
}

func newProbe(t *testing.T, level slog.Level, defaultDeadline time.Duration) *probe {
	t.Helper()
	p := &probe{lis: bufconn.Listen(1 << 16), logs: &syncBuffer{}}
	srv := server.New(server.Config{
		Auth:            testAuth(t),
		Logger:          slog.New(slog.NewJSONHandler(p.logs, &slog.HandlerOptions{Level: level})),
		DefaultDeadline: defaultDeadline,
		Register:        func(s *grpc.Server) { s.RegisterService(&probeDesc, struct{}{}) },
		RegisteredRoles: map[string]server.Role{
			"/tokenvault.test.Probe/Call":   server.RoleApplication,
			"/tokenvault.test.Probe/Stream": server.RoleApplication,
		},
	})
	go srv.GRPC().Serve(p.lis)
	t.Cleanup(srv.GRPC().Stop)
	return p
}

// dial returns a connection presenting the named key ("" for none).
func (p *probe) dial(t *testing.T, key string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return p.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerCreds(testKeys[key])))
	}
	conn, err := grpc.NewClient("passthrough:///bufnet", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func probeCall(ctx context.Context, conn *grpc.ClientConn, req string) (string, error) {
	out := new(wrapperspb.StringValue)
	err := conn.Invoke(ctx, "/tokenvault.test.Probe/Call", wrapperspb.String(req+" "+probeSecret), out)
	return out.Value, err
}

func probeStream(ctx context.Context, conn *grpc.ClientConn, req string) error {
	s, err := conn.NewStream(ctx, &probeDesc.Streams[0], "/tokenvault.test.Probe/Stream")
	if err != nil {
		return err
	}
	if err := s.SendMsg(wrapperspb.String(req + " " + probeSecret)); err != nil {
		return err
	}
	if err := s.CloseSend(); err != nil {
		return err
	}
	for {
		if err := s.RecvMsg(new(wrapperspb.StringValue)); err != nil {
			if err.Error() == "EOF" {
				return nil
			}
			return err
		}
	}
}

// TestLogging_FinishedCall: every call ends in one "finished call" record
// with the method, the code, the peer and the duration, at a level chosen
// by the code (OK, NotFound...: debug; Internal: error; others: warn), and
// nothing of the payload. Below the logger's level nothing is written.
func TestLogging_FinishedCall(t *testing.T) {
	p := newProbe(t, slog.LevelDebug, 0)
	conn, logs := p.dial(t, "ops"), p.logs
	ctx := context.Background()

	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if _, err := probeCall(dctx, conn, "ok"); err != nil {
		t.Fatal(err)
	}
	recs := logs.records(t)
	if len(recs) != 1 {
		t.Fatalf("an OK call logged %d records; want 1: %v", len(recs), recs)
	}
	want := map[string]string{
		"level": "DEBUG", "msg": "finished call", "protocol": "grpc", "grpc.component": "server",
		"grpc.service": "tokenvault.test.Probe", "grpc.method": "Call", "grpc.method_type": "unary",
		"grpc.code": "OK",
	}
	for k, v := range want {
		if got, _ := recs[0][k].(string); got != v {
			t.Errorf("OK call: log field %q = %q; want %q", k, got, v)
		}
	}
	for _, k := range []string{"peer.address", "grpc.start_time", "grpc.request.deadline", "grpc.time_ms"} {
		if s, _ := recs[0][k].(string); s == "" {
			t.Errorf("OK call: log field %q missing: %v", k, recs[0])
		}
	}
	if _, err := time.Parse(time.RFC3339, recs[0]["grpc.start_time"].(string)); err != nil {
		t.Errorf("grpc.start_time: %v", err)
	}
	if _, has := recs[0]["grpc.error"]; has {
		t.Errorf("OK call has grpc.error: %v", recs[0])
	}

	for _, c := range []struct {
		req, level, code string
	}{
		{"not_found", "DEBUG", "NotFound"},
		{"internal", "ERROR", "Internal"},
	} {
		if _, err := probeCall(ctx, conn, c.req); status.Code(err).String() != c.code {
			t.Fatalf("probe %s = %v", c.req, err)
		}
		recs := logs.records(t)
		if len(recs) != 1 || recs[0]["level"] != c.level || recs[0]["grpc.code"] != c.code || recs[0]["grpc.error"] == nil {
			t.Errorf("probe %s logged %v; want one %s record with code %s and grpc.error", c.req, recs, c.level, c.code)
		}
		if _, has := recs[0]["grpc.request.deadline"]; has {
			t.Errorf("a call without a deadline logged grpc.request.deadline: %v", recs[0])
		}
	}

	if err := probeStream(ctx, conn, "ok"); err != nil {
		t.Fatal(err)
	}
	recs = logs.records(t)
	if len(recs) != 1 || recs[0]["grpc.method_type"] != "server_stream" || recs[0]["grpc.method"] != "Stream" || recs[0]["grpc.code"] != "OK" {
		t.Errorf("stream logged %v; want one finished call of a server_stream", recs)
	}
}

func TestLogging_BelowLevel_Silent(t *testing.T) {
	p := newProbe(t, slog.LevelInfo, 0)
	conn, logs := p.dial(t, "ops"), p.logs
	ctx := context.Background()
	for _, req := range []string{"ok", "not_found"} {
		probeCall(ctx, conn, req)
		probeStream(ctx, conn, req)
	}
	if recs := logs.records(t); len(recs) != 0 {
		t.Errorf("calls answered OK and NotFound logged %v at level info; want nothing", recs)
	}
	// An internal error is an error, a refused call a warning.
	probeCall(ctx, conn, "internal")
	probeStream(ctx, conn, "internal")
	probeCall(ctx, p.dial(t, ""), "ok")
	recs := logs.records(t)
	if len(recs) != 3 || recs[0]["level"] != "ERROR" || recs[1]["level"] != "ERROR" ||
		recs[2]["level"] != "WARN" || recs[2]["grpc.code"] != "Unauthenticated" {
		t.Errorf("internal errors and a call without a key logged %v; want ERROR, ERROR, WARN", recs)
	}
}

// TestDefaultDeadline: a call without a deadline gets DefaultDeadline, and
// its context ends when that passes; a call with a deadline keeps it.
func TestDefaultDeadline(t *testing.T) {
	conn := newProbe(t, slog.LevelInfo, time.Hour).dial(t, "ops")
	ctx := context.Background()
	left, err := probeCall(ctx, conn, "deadline")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := time.ParseDuration(left); err != nil || d <= 59*time.Minute || d > time.Hour {
		t.Errorf("a call without a deadline had %q left; want just under the default, 1h", left)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	left, err = probeCall(dctx, conn, "deadline")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := time.ParseDuration(left); err != nil || d > 10*time.Minute {
		t.Errorf("a call with a 10m deadline had %q left", left)
	}

	if name, err := probeCall(ctx, conn, "caller"); err != nil || name != "ops" {
		t.Errorf("the caller seen under the default deadline = %q, %v; want ops", name, err)
	}

	short := newProbe(t, slog.LevelInfo, 50*time.Millisecond).dial(t, "ops")
	for _, req := range []string{"wait", "wait_derived"} {
		if _, err := probeCall(ctx, short, req); status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("probe %s past the default deadline = %v; want DeadlineExceeded", req, err)
		}
	}
}
