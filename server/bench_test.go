package server_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
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
	"github.com/tokenvault/tokenvault/server/gcgoal"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// The hot-path benchmark runs the servers it measures in child processes
// (this test binary, re-executed) so that each one's CPU time can be read
// from /proc apart from the load generator's: benchChildEnv=sidecar is the
// real sidecar, benchChildEnv=floor a bare grpc-go server.
const benchChildEnv = "TOKENVAULT_BENCH_CHILD"

// benchProfileEnv, if set, names a file for the child's CPU profile of the
// whole load (both phases): TOKENVAULT_BENCH_CPUPROFILE=/tmp/cpu.out make bench.
const benchProfileEnv = "TOKENVAULT_BENCH_CPUPROFILE"

// benchMemProfileEnv, if set, names a file for the child's allocation
// profile of the whole run.
const benchMemProfileEnv = "TOKENVAULT_BENCH_MEMPROFILE"

func TestMain(m *testing.M) {
	child := map[string]func() error{"sidecar": benchChild, "floor": floorChild}[os.Getenv(benchChildEnv)]
	if child != nil {
		if err := child(); err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// emptyDesc is a unary service whose handler does nothing. On the sidecar
// it is the cost of any gRPC method there, with the same interceptors; on a
// bare grpc.NewServer() (floorChild) it is the floor: what a gRPC call costs
// at all.
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
	mk, _ := seal.GenerateMasterKey()
	kr, err := vault.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	metrics := server.NewMetrics()
	v, err := vault.Open(context.Background(), vault.Config{
		Store: st, Keyring: kr, Providers: map[string]vault.Provider{"acme": server.AdaptProvider(p)}, Logger: log,
		OnRefresh: metrics.ObserveRefresh,
		StartURL:  server.StartURL("http://" + hl.Addr().String()),
	})
	if err != nil {
		return err
	}
	audit := audit.New(audit.Config{Store: st, Logger: log})
	defer audit.Close()
	auth, err := server.NewAuth([]server.APIKey{{Name: "bench", Key: benchKey, Access: server.Access{
		Role: server.RoleApplication, RateLimit: server.RateLimit{RPS: 1e9, Burst: 1e9},
	}}}, nil)
	if err != nil {
		return err
	}
	if os.Getenv("GOGC") == "" {
		defer gcgoal.Start(gcgoal.Sidecar)() // as cmd/tokenvault serves
	}
	srv := server.New(server.Config{Vault: v, Providers: []providers.Info{p.Info()}, Logger: log,
		Auth: auth, Audit: audit, Metrics: metrics, PublicURL: "http://" + hl.Addr().String(),
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
	jar, _ := cookiejar.New(nil)
	resp, err := (&http.Client{Jar: jar}).Get(u)
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
	if path := os.Getenv(benchMemProfileEnv); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			return err
		}
	}
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

// floorChild serves emptyDesc on a bare grpc-go server (no options, no
// interceptors) on 127.0.0.1 until its stdin closes. It prints "READY <addr>
// -".
func floorChild() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s := grpc.NewServer()
	s.RegisterService(&emptyDesc, struct{}{})
	go s.Serve(l)
	fmt.Printf("READY %s -\n", l.Addr())
	io.Copy(io.Discard, os.Stdin) // until the parent closes it
	s.Stop()
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

// benchBearer presents benchKey on every call, to every server: the floor
// receives the same bytes as the sidecar.
type benchBearer struct{}

func (benchBearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + benchKey}, nil
}

func (benchBearer) RequireTransportSecurity() bool { return false }

// benchChildProc is a server under measurement in a child process.
type benchChildProc struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	addr, id string
}

// startBenchChild re-executes the test binary as a child of the given kind
// and waits for its READY line.
func startBenchChild(b *testing.B, kind string, env ...string) *benchChildProc {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), benchChildEnv+"="+kind), env...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &benchChildProc{cmd: cmd, stdin: stdin}
	b.Cleanup(func() { stdin.Close(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("%s child: %v", kind, err)
	}
	if _, err := fmt.Sscanf(line, "READY %s %s", &c.addr, &c.id); err != nil {
		b.Fatalf("%s child said %q", kind, line)
	}
	return c
}

// benchTarget is one method of one server, measured in the same way as the
// others.
type benchTarget struct {
	name string
	pid  int
	call func(ctx context.Context) error
}

// saturated runs call from `workers` goroutines, each calling again as soon
// as its call returns, for d; it returns the calls made and the server's
// CPU time over them.
func saturated(b *testing.B, t benchTarget, workers int, d time.Duration) (calls int64, wall, cpu time.Duration) {
	var n, errs atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cpu0, err := procCPU(t.pid)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := t.call(context.Background()); err != nil {
					errs.Add(1)
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	wall = time.Since(start)
	cpu1, _ := procCPU(t.pid)
	if errs.Load() > 0 {
		b.Fatalf("%s: %d of %d calls failed", t.name, errs.Load(), n.Load())
	}
	return n.Load(), wall, cpu1 - cpu0
}

// fixedRate calls at rps calls a second in all, spread evenly over
// `workers` goroutines, for d, and returns each call's latency (from the
// moment it is sent to its answer) and the server's CPU time. A worker
// that falls behind its schedule sends at once.
func fixedRate(b *testing.B, t benchTarget, workers int, rps float64, d time.Duration) (lat []time.Duration, cpu time.Duration) {
	interval := time.Duration(float64(time.Second) * float64(workers) / rps)
	cpu0, err := procCPU(t.pid)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	end := start.Add(d)
	lats := make([][]time.Duration, workers)
	var errs atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			next := start.Add(interval * time.Duration(w) / time.Duration(workers))
			for {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				if !time.Now().Before(end) {
					return
				}
				t0 := time.Now()
				if err := t.call(context.Background()); err != nil {
					errs.Add(1)
				}
				lats[w] = append(lats[w], time.Since(t0))
				next = next.Add(interval)
			}
		})
	}
	wg.Wait()
	cpu1, _ := procCPU(t.pid)
	if errs.Load() > 0 {
		b.Fatalf("%s: %d calls failed at a fixed rate", t.name, errs.Load())
	}
	for _, l := range lats {
		lat = append(lat, l...)
	}
	slices.Sort(lat)
	return lat, cpu1 - cpu0
}

// quantile returns the q-quantile of sorted (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// series collects one figure over the rounds.
type series []float64

func (s series) median() float64 {
	c := slices.Clone(s)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// format is "median (min–max)", each number formatted by f.
func (s series) format(f string) string {
	return fmt.Sprintf(f+" ("+f+"–"+f+")", s.median(), slices.Min(s), slices.Max(s))
}

// Load of the benchmark: benchWorkers concurrent callers over benchConns
// loopback TCP connections per server; the fixed-rate phase sends
// benchRate calls a second from the same callers.
const (
	benchConns   = 4
	benchWorkers = 16
	benchRate    = 2000
)

// BenchmarkHotPath measures GetAccessToken against two empty handlers, in
// the same run and under the same load:
//
//   - floor: an empty unary handler on a bare grpc-go server (no options, no
//     interceptors) in a child process of its own: what a gRPC call costs
//     at all;
//   - empty: the same handler registered on the sidecar, so it passes every
//     interceptor (recovery, logging, the access check with its rate limit,
//     the default deadline) with the same API key;
//   - token: GetAccessToken on the sidecar, as in production: bbolt with
//     fsync, authentication, an audit record per call (written in batches
//     by the flusher, inside the measured process) and metrics.
//
// Every round measures each of them saturated (benchWorkers callers calling
// back to back: QPS and the server's CPU time per call, read from /proc)
// and then at a fixed rate (benchRate calls a second from the same callers:
// p50/p99/p999 latency, and CPU per call), in short slices that alternate
// between the three so that the host's changing load falls on all alike. It prints the median and range over the rounds
// of each figure and of GetAccessToken's ratios to the floor and to the
// empty handler, computed within each round. Run it with
//
//	make bench   # go test ./server -run '^$' -bench HotPath -benchtime 1x
//
// TOKENVAULT_BENCH_ROUNDS sets the rounds (default 5);
// TOKENVAULT_BENCH_CPUPROFILE=FILE writes the sidecar's CPU profile,
// TOKENVAULT_BENCH_MEMPROFILE=FILE its allocation profile.
func BenchmarkHotPath(b *testing.B) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		b.Skip("needs /proc")
	}
	rounds := 5
	if v := os.Getenv("TOKENVAULT_BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TOKENVAULT_BENCH_ROUNDS=%q: want a positive number", v)
		}
		rounds = n
	}
	// The load generator (this process) collects rarely, so that its own
	// collections stay out of the latencies it measures.
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	sidecar := startBenchChild(b, "sidecar")
	floor := startBenchChild(b, "floor")
	dial := func(addr string) func() *grpc.ClientConn {
		var cs []*grpc.ClientConn
		for range benchConns {
			c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithPerRPCCredentials(benchBearer{}))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			cs = append(cs, c)
		}
		var rr atomic.Uint64
		return func() *grpc.ClientConn { return cs[rr.Add(1)%benchConns] }
	}
	onSidecar, onFloor := dial(sidecar.addr), dial(floor.addr)
	tokenReq := &tvv1.GetAccessTokenRequest{ConnectionId: sidecar.id}
	targets := []benchTarget{
		{"floor", floor.cmd.Process.Pid, func(ctx context.Context) error {
			return onFloor().Invoke(ctx, "/tokenvault.bench.Empty/Call", &emptypb.Empty{}, new(emptypb.Empty))
		}},
		{"empty", sidecar.cmd.Process.Pid, func(ctx context.Context) error {
			return onSidecar().Invoke(ctx, "/tokenvault.bench.Empty/Call", &emptypb.Empty{}, new(emptypb.Empty))
		}},
		{"token", sidecar.cmd.Process.Pid, func(ctx context.Context) error {
			_, err := tvv1.NewTokenVaultServiceClient(onSidecar()).GetAccessToken(ctx, tokenReq)
			return err
		}},
	}
	for _, t := range targets { // warm up
		saturated(b, t, benchWorkers, 500*time.Millisecond)
	}

	// A round is slices short enough that the host's load, which moves
	// from second to second on a shared machine, falls on the three
	// targets alike: satSlices of satSlice saturated and then rateSlices
	// of rateSlice at the fixed rate for each target in turn, the order
	// rotating from slice to slice.
	const satSlices, satSlice = 8, 250 * time.Millisecond
	const rateSlices, rateSlice = 3, time.Second
	type figures struct{ qps, cpu, rateCPU, p50, p99, p999 series }
	fig := map[string]*figures{}
	for _, t := range targets {
		fig[t.name] = &figures{}
	}
	type sums struct {
		calls     int64
		wall, cpu time.Duration
		lat       []time.Duration
	}
	b.ResetTimer()
	for range rounds {
		sum := map[string]*sums{}
		for _, t := range targets {
			sum[t.name] = &sums{}
		}
		for i := range satSlices {
			for j := range targets {
				t := targets[(i+j)%len(targets)]
				n, wall, cpu := saturated(b, t, benchWorkers, satSlice)
				s := sum[t.name]
				s.calls, s.wall, s.cpu = s.calls+n, s.wall+wall, s.cpu+cpu
			}
		}
		for _, t := range targets {
			s, f := sum[t.name], fig[t.name]
			f.qps = append(f.qps, float64(s.calls)/s.wall.Seconds())
			f.cpu = append(f.cpu, float64(s.cpu.Nanoseconds())/1e3/float64(s.calls))
			s.cpu = 0
		}
		for i := range rateSlices {
			for j := range targets {
				t := targets[(i+j)%len(targets)]
				lat, cpu := fixedRate(b, t, benchWorkers, benchRate, rateSlice)
				s := sum[t.name]
				s.lat, s.cpu = append(s.lat, lat...), s.cpu+cpu
			}
		}
		for _, t := range targets {
			s, f := sum[t.name], fig[t.name]
			slices.Sort(s.lat)
			f.rateCPU = append(f.rateCPU, float64(s.cpu.Nanoseconds())/1e3/float64(len(s.lat)))
			ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
			f.p50 = append(f.p50, ms(quantile(s.lat, 0.5)))
			f.p99 = append(f.p99, ms(quantile(s.lat, 0.99)))
			f.p999 = append(f.p999, ms(quantile(s.lat, 0.999)))
		}
	}
	b.StopTimer()

	ratio := func(a, b series) series {
		r := make(series, len(a))
		for i := range a {
			r[i] = a[i] / b[i]
		}
		return r
	}
	fl, em, tk := fig["floor"], fig["empty"], fig["token"]
	w := os.Stdout
	fmt.Fprintf(w, "\nhot path: %d rounds; c=%d over %d connections; median (min–max) of the rounds\n", rounds, benchWorkers, benchConns)
	fmt.Fprintf(w, "%-6s %-28s %-30s %-28s %-24s %-24s %-24s\n", "", "QPS (saturated)", "server CPU µs/call (saturated)",
		fmt.Sprintf("server CPU µs/call @%d/s", benchRate), "p50 ms", "p99 ms", "p999 ms")
	for _, t := range targets {
		f := fig[t.name]
		fmt.Fprintf(w, "%-6s %-28s %-30s %-28s %-24s %-24s %-24s\n", t.name, f.qps.format("%.0f"), f.cpu.format("%.1f"),
			f.rateCPU.format("%.1f"), f.p50.format("%.3f"), f.p99.format("%.3f"), f.p999.format("%.3f"))
	}
	fmt.Fprintf(w, "token/floor: CPU %s, QPS %s, CPU @%d/s %s\n", ratio(tk.cpu, fl.cpu).format("%.2f"),
		ratio(tk.qps, fl.qps).format("%.2f"), benchRate, ratio(tk.rateCPU, fl.rateCPU).format("%.2f"))
	fmt.Fprintf(w, "token/empty: CPU %s, QPS %s, CPU @%d/s %s\n", ratio(tk.cpu, em.cpu).format("%.2f"),
		ratio(tk.qps, em.qps).format("%.2f"), benchRate, ratio(tk.rateCPU, em.rateCPU).format("%.2f"))
	fmt.Fprintf(w, "empty/floor: CPU %s, QPS %s\n", ratio(em.cpu, fl.cpu).format("%.2f"), ratio(em.qps, fl.qps).format("%.2f"))

	b.ReportMetric(ratio(tk.cpu, fl.cpu).median(), "cpu/floor")
	b.ReportMetric(ratio(tk.qps, fl.qps).median(), "qps/floor")
	b.ReportMetric(ratio(tk.cpu, em.cpu).median(), "cpu/empty")
	b.ReportMetric(ratio(tk.qps, em.qps).median(), "qps/empty")
	b.ReportMetric(tk.p99.median(), "token-p99-ms")
	b.ReportMetric(fl.p99.median(), "floor-p99-ms")
}
