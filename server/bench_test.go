package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// The hot-path benchmark runs the sidecar in a child process (this test
// binary, re-executed) so that the server's CPU time can be read from /proc
// apart from the load generator's.
const benchChildEnv = "TOKENVAULT_BENCH_CHILD"

// benchProfileEnv, if set, names a file for the child's CPU profile of the
// whole load (both phases): TOKENVAULT_BENCH_CPUPROFILE=/tmp/cpu.out make bench.
const benchProfileEnv = "TOKENVAULT_BENCH_CPUPROFILE"

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) == "1" {
		if err := benchChild(); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// emptyDesc is a unary service whose handler does nothing: the floor any
// gRPC method costs on this server, with the same interceptors.
var emptyDesc = grpc.ServiceDesc{
	ServiceName: "tokenvault.bench.Empty",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Call",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) { return &emptypb.Empty{}, nil }
			if ic == nil {
				return h(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: "/tokenvault.bench.Empty/Call"}, h)
		},
	}},
}

// benchKey is the API key both phases present: authentication runs on
// both, so the comparison is of the handlers, not of auth.
const benchKey = "tvk_bench_application_key_0000"

// benchChild serves a real sidecar (bbolt with fsync, the strict fake
// provider, one connection of a Slack-sized grant) on 127.0.0.1 until its
// stdin closes, with authentication (benchKey, an application key with a
// rate limit too high to bite), audit (every token read is recorded) and
// metrics on, as in production. It prints "READY <grpc addr> <connection
// id>".
func benchChild() error {
	dir, err := os.MkdirTemp("", "tvbench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fake := providertest.Start(providertest.Options{
		RedirectURIs: []string{"http://" + hl.Addr().String() + "/oauth/callback/acme"},
		Scopes:       []string{"chat:write", "channels:read"},
	})
	defer fake.Close()
	pc := fake.Config()
	pc.Name = "acme"
	p, err := providers.NewOAuth2(pc)
	if err != nil {
		return err
	}
	st, err := bolt.Open(filepath.Join(dir, "tv.db"), bolt.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	mk, _ := vault.GenerateMasterKey()
	kr, err := vault.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	metrics := server.NewMetrics()
	v, err := vault.Open(context.Background(), vault.Config{
		Store: st, Keyring: kr, Providers: map[string]vault.Provider{"acme": server.AdaptProvider(p)}, Logger: log,
		OnRefresh: metrics.ObserveRefresh,
	})
	if err != nil {
		return err
	}
	audit := vault.NewAuditLog(vault.AuditConfig{Store: st, Logger: log})
	defer audit.Close()
	auth, err := server.NewAuth([]server.APIKey{{Name: "bench", Key: benchKey, Access: server.Access{
		Role: server.RoleApplication, RateLimit: server.RateLimit{RPS: 1e9, Burst: 1e9},
	}}}, nil)
	if err != nil {
		return err
	}
	srv := server.New(server.Config{Vault: v, Providers: []providers.Info{p.Info()}, Logger: log,
		Auth: auth, Audit: audit, Metrics: metrics,
		Register:        func(s *grpc.Server) { s.RegisterService(&emptyDesc, struct{}{}) },
		RegisteredRoles: map[string]server.Role{"/tokenvault.bench.Empty/Call": server.RoleApplication}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, gl, hl, time.Second) }()

	u, _, err := v.StartConnect(ctx, vault.ConnectRequest{Owner: "bench", Provider: "acme"})
	if err != nil {
		return err
	}
	resp, err := http.Get(u)
	if err != nil {
		return err
	}
	resp.Body.Close()
	cs, _, _ := v.List(ctx, vault.Filter{}, "", 1)
	if len(cs) != 1 {
		return fmt.Errorf("connect failed: %d", resp.StatusCode)
	}
	if path := os.Getenv(benchProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Printf("READY %s %s\n", gl.Addr(), cs[0].ID)
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	cancel()
	if err := <-done; err != nil {
		return err
	}
	audit.Close()
	if n := audit.Dropped(); n > 0 {
		return fmt.Errorf("%d audit records dropped (of %d written)", n, audit.Written())
	}
	fmt.Fprintf(os.Stderr, "bench child: %d audit records written, none dropped\n", audit.Written())
	return nil
}

// procCPU returns the user+system CPU time pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line, in clock ticks (USER_HZ = 100).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// benchBearer presents benchKey on every call.
type benchBearer struct{}

func (benchBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + benchKey}, nil
}

func (benchBearer) RequireTransportSecurity() bool { return false }

type phase struct {
	name string
	call func(ctx context.Context) error
}

type result struct {
	reqs   int64
	wall   time.Duration
	cpu    time.Duration
	errors int64
}

// load runs call from `workers` goroutines for d (and at most maxReqs
// calls), and measures the server's CPU over the run.
func load(b *testing.B, pid, workers int, d time.Duration, maxReqs int64, call func(context.Context) error) result {
	var n, errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cpu0, err := procCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && n.Add(1) <= maxReqs {
				if err := call(context.Background()); err != nil {
					errs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	cpu1, _ := procCPU(pid)
	return result{reqs: min(n.Load(), maxReqs), wall: wall, cpu: cpu1 - cpu0, errors: errs.Load()}
}

// BenchmarkHotPath compares GetAccessToken with an empty unary handler on
// the same server, over the same loopback TCP connections, under the same
// load, alternating phases so drift affects both. Both phases present the
// same API key and pass the same interceptors (recovery, logging, the
// access check with its rate limit); the token phase also pays what a
// token read costs on top: the provider lookup for the access check, the
// token-read metric and an audit record per call (written in batches by
// the flusher, inside the measured server process). Run it with
//
//	go test ./server -run '^$' -bench HotPath -benchtime 1x
//
// It reports QPS and server CPU per request for each, and their ratios.
func BenchmarkHotPath(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs /proc")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=1")
	if os.Getenv("GOGC") == "" {
		cmd.Env = append(cmd.Env, "GOGC=50") // the sidecar's default (cmd/tokenvault)
	}
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("child: %v", err)
	}
	var addr, id string
	if _, err := fmt.Sscanf(line, "READY %s %s", &addr, &id); err != nil {
		b.Fatalf("child said %q", line)
	}
	const conns, workers = 4, 64
	var clients []*grpc.ClientConn
	for range conns {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(benchBearer{}))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	var rr atomic.Uint64
	pick := func() *grpc.ClientConn { return clients[rr.Add(1)%conns] }
	tokenReq := &tvv1.GetAccessTokenRequest{ConnectionId: id}
	phases := []phase{
		{"empty", func(ctx context.Context) error {
			return pick().Invoke(ctx, "/tokenvault.bench.Empty/Call", &emptypb.Empty{}, new(emptypb.Empty))
		}},
		{"token", func(ctx context.Context) error {
			_, err := tvv1.NewTokenVaultServiceClient(pick()).GetAccessToken(ctx, tokenReq)
			return err
		}},
	}
	// Warm up both paths.
	for _, p := range phases {
		load(b, cmd.Process.Pid, workers, 500*time.Millisecond, 1e6, p.call)
	}
	const rounds, per, maxReqs = 3, 2 * time.Second, 2_000_000
	total := map[string]*result{"empty": {}, "token": {}}
	b.ResetTimer()
	for range rounds {
		for _, p := range phases {
			r := load(b, cmd.Process.Pid, workers, per, maxReqs, p.call)
			if r.errors > 0 {
				b.Fatalf("%s: %d errors", p.name, r.errors)
			}
			t := total[p.name]
			t.reqs += r.reqs
			t.wall += r.wall
			t.cpu += r.cpu
		}
	}
	b.StopTimer()
	qps := func(r *result) float64 { return float64(r.reqs) / r.wall.Seconds() }
	cpuPer := func(r *result) float64 { return float64(r.cpu.Microseconds()) / float64(r.reqs) }
	e, t := total["empty"], total["token"]
	b.ReportMetric(qps(e), "empty-qps")
	b.ReportMetric(qps(t), "token-qps")
	b.ReportMetric(cpuPer(e), "empty-server-cpu-µs/req")
	b.ReportMetric(cpuPer(t), "token-server-cpu-µs/req")
	b.ReportMetric(cpuPer(t)/cpuPer(e), "cpu-ratio")
	b.ReportMetric(qps(t)/qps(e), "qps-ratio")
}
