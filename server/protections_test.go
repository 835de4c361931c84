package server_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/wrapperspb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

// Tests that pin the server's protections: each fails when its protection
// is removed (each was seen failing so).

// TestServer_DefaultDeadline_30s: with Config.DefaultDeadline unset, a call
// that arrives without a deadline gets 30 s.
func TestServer_DefaultDeadline_30s(t *testing.T) {
	conn := newProbe(t, slog.LevelInfo, 0).dial(t, "ops")
	left, err := probeCall(context.Background(), conn, "deadline")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := time.ParseDuration(left); err != nil || d <= 25*time.Second || d > 30*time.Second {
		t.Errorf("a call without a deadline had %q left; want just under the default, 30s", left)
	}
}

// TestServer_MessageLimit_1MiB: a request over 1 MiB is refused by the
// transport (RESOURCE_EXHAUSTED) before it is decoded; grpc's default would
// take 4 MiB.
func TestServer_MessageLimit_1MiB(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	big := strings.Repeat("x", 1<<20+512<<10)
	_, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: big})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 1.5 MiB request = %v; want ResourceExhausted from the 1 MiB limit", err)
	}
}

// rawConn opens an HTTP/2 connection to the env's gRPC server and returns
// its framer after the preface, with the server's first SETTINGS read.
func rawConn(t *testing.T, e *env) (*http2.Framer, map[http2.SettingID]uint32, net.Conn) {
	t.Helper()
	conn, err := e.lis.DialContext(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			settings := map[http2.SettingID]uint32{}
			sf.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
			fr.WriteSettingsAck()
			return fr, settings, conn
		}
	}
}

// TestServer_MaxConcurrentStreams_1000: the server announces at most 1000
// concurrent streams per connection (HTTP/2 SETTINGS, which clients obey
// and the server enforces); grpc's default is unlimited.
func TestServer_MaxConcurrentStreams_1000(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	_, settings, _ := rawConn(t, e)
	if got, ok := settings[http2.SettingMaxConcurrentStreams]; !ok || got != 1000 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent: %v); want 1000", got, ok)
	}
	if got, ok := settings[http2.SettingMaxHeaderListSize]; !ok || got != server.MaxHeaderListSize {
		t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d (sent: %v); want %d", got, ok, server.MaxHeaderListSize)
	}
}

// pingAfter sends a PING after each of the delays, waiting for each
// one's ACK, and reports the GOAWAY debug data the server answered with,
// or "" if it kept the connection.
func pingAfter(t *testing.T, fr *http2.Framer, conn net.Conn, delays ...time.Duration) string {
	t.Helper()
	for i, d := range delays {
		time.Sleep(d)
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			return "write failed: " + err.Error()
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		for acked := false; !acked; {
			f, err := fr.ReadFrame()
			if err != nil {
				return "read failed: " + err.Error()
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				return string(f.DebugData())
			case *http2.PingFrame:
				acked = f.IsAck()
			}
		}
	}
	return ""
}

// TestServer_Keepalive_Enforced: a client pinging in a flood is sent away
// (GOAWAY too_many_pings), while one pinging every 10 s without any call
// under way, as the documented client keepalive does, is kept (grpc's
// default policy would send it away: it allows no ping without a stream
// more often than every 2 hours).
func TestServer_Keepalive_Enforced(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	t.Run("flood", func(t *testing.T) {
		fr, _, conn := rawConn(t, e)
		if got := pingAfter(t, fr, conn, make([]time.Duration, 10)...); got != "too_many_pings" {
			t.Errorf("10 pings at once: server answered %q; want GOAWAY too_many_pings", got)
		}
	})
	t.Run("every 10s without a call", func(t *testing.T) {
		if testing.Short() {
			t.Skip("takes 32 s")
		}
		t.Parallel()
		fr, _, conn := rawConn(t, e)
		// Three pings 10.5 s apart, then one at once: one strike, where
		// grpc's default counts three and sends the client away (its
		// GOAWAY follows the third's ACK, so the fourth ping finds it).
		const d = 10*time.Second + 500*time.Millisecond
		if got := pingAfter(t, fr, conn, 0, d, d, d, 0); got != "" {
			t.Errorf("a ping every 10.5 s: server answered GOAWAY %q; want the connection kept", got)
		}
	})
}

// panicSecret is the value a handler panics with; it must reach neither
// the log nor the client.
const panicSecret = "tvk-panic-value-secret"

var panicDesc = grpc.ServiceDesc{
	ServiceName: "tokenvault.test.Panic",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/tokenvault.test.Panic/Call"}
			return ic(ctx, in, info, func(context.Context, any) (any, error) {
				panic("the token is " + panicSecret)
			})
		},
	}},
}

// TestServer_Panic_ValueNeitherLoggedNorReturned: a handler's panic is
// recovered into INTERNAL "internal error"; the log has the stack, not the
// panic value, and the client gets neither.
func TestServer_Panic_ValueNeitherLoggedNorReturned(t *testing.T) {
	logs := &syncBuffer{}
	p := &probe{lis: bufconn.Listen(1 << 16), logs: logs}
	srv := server.New(server.Config{
		Auth:            testAuth(t),
		Logger:          slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Register:        func(s *grpc.Server) { s.RegisterService(&panicDesc, struct{}{}) },
		RegisteredRoles: map[string]server.Role{"/tokenvault.test.Panic/Call": server.RoleApplication},
	})
	go srv.GRPC().Serve(p.lis)
	t.Cleanup(srv.GRPC().Stop)
	err := p.dial(t, "ops").Invoke(context.Background(), "/tokenvault.test.Panic/Call", wrapperspb.String("x"), new(wrapperspb.StringValue))
	st := status.Convert(err)
	if st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Errorf("a panicking handler = %v; want Internal \"internal error\"", err)
	}
	logs.mu.Lock()
	text := logs.b.String()
	logs.mu.Unlock()
	if strings.Contains(text, panicSecret) {
		t.Errorf("the log holds the panic value:\n%s", text)
	}
	if !strings.Contains(text, "panic in handler") {
		t.Errorf("the panic was not logged:\n%s", text)
	}
}

// TestServer_PKCE_FreshVerifierPerFlow: every connect flow sends its own
// S256 challenge (a fixed verifier would make them equal).
func TestServer_PKCE_FreshVerifierPerFlow(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	seen := map[string]bool{}
	for range 5 {
		sc, err := e.api.StartConnect(context.Background(), &tvv1.StartConnectRequest{Owner: "alice", Provider: "acme"})
		if err != nil {
			t.Fatal(err)
		}
		u := e.providerURL(sc.AuthorizationUrl)
		q := u.Query()
		ch := q.Get("code_challenge")
		if q.Get("code_challenge_method") != "S256" || len(ch) != 43 {
			t.Fatalf("authorization URL challenge %q (%s); want 43 characters of S256", ch, q.Get("code_challenge_method"))
		}
		if seen[ch] {
			t.Fatalf("two flows sent the same code_challenge %q: the verifier is not fresh", ch)
		}
		seen[ch] = true
	}
}
