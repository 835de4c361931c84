// Command tokenvault-bench measures the refresh scheduler at scale: many
// connections refreshed ahead of expiry against a provider on loopback,
// while readers ask for tokens, on a simulated clock so that an hour of
// token lifetimes fits in a short run.
//
//	go run ./cmd/tokenvault-bench -connections 100000 -lifetime 1h -duration 60s
//
// It seeds a bbolt file with the connections (kept in -data to be reused),
// copies it, and measures on the copy: the startup (bbolt open, keyring,
// vault.Open, schedule built), refreshes per second, their spread (the
// largest number in one simulated second against the mean), CPU, peak
// resident memory, and that no reader was ever served an expired token.
//
// With -probe BINARY it measures the real sidecar instead, as a
// Kubernetes probe sees it (probe.go): exec -> first SERVING gRPC health
// check, and idle resident memory, in dev mode, on an empty store and on a
// copy of the seeded one, -runs times each, each round after the floor (a
// bare grpc-go server, ./floor) and as a ratio to it:
//
//	make build && go run ./cmd/tokenvault-bench -connections 10000 -probe .bin/tokenvault
//
// With -etcd as well, the same on the etcd store: a one-member etcd
// cluster on 127.0.0.1 (etcd.go), empty and with the seeded connections
// migrated into it by `tokenvault store migrate`:
//
//	go run ./cmd/tokenvault-bench -connections 100000 -probe .bin/tokenvault -etcd -data /tmp/seed100k
//
// The provider is a small strict OAuth 2.0 token endpoint (rotation, reuse
// detection) run in a child process on 127.0.0.1, so that its bookkeeping
// is not counted; the vault reaches it through the real generic provider
// (providers.OAuth2) and server.AdaptProvider. providertest is not used: it
// mints grants only through its authorize endpoint and keeps every token it
// ever issued, which at this scale would dominate the measurement.
//
// Time: the simulated clock starts at 2030-01-01T00:00:00Z and runs -scale
// times faster than the real one (default: lifetime/duration, so one token
// lifetime passes during the run). It drives the vault (expiry, min_valid),
// the scheduler (timers, rate limit, jitter) and the expiry the provider
// computes from expires_in. Per-second figures are given per simulated
// second (what a provider would see) and per real second.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// epoch is when the simulated clock starts.
var epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

const (
	clientID     = "bench-client"
	clientSecret = "bench-secret"
	providerName = "bench"
)

type options struct {
	connections  int
	lifetime     time.Duration
	duration     time.Duration
	scale        float64
	readers      int
	maxReads     int64
	concurrency  int
	rate         float64
	dataDir      string
	noSync       bool
	fake         bool
	cpuprofile   string
	memprofile   string
	readRate     float64
	tokenBytes   int
	gogc         int
	memLimit     int64
	startupOnly  bool
	fakeLifetime time.Duration
	probe        string
	etcd         bool
	etcdMember   string
	runs         int
	settle       time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.connections, "connections", 100000, "connections to schedule")
	flag.DurationVar(&o.lifetime, "lifetime", time.Hour, "access-token lifetime (simulated time)")
	flag.DurationVar(&o.duration, "duration", 60*time.Second, "length of the run (real time)")
	flag.Float64Var(&o.scale, "scale", 0, "simulated seconds per real second (0: lifetime/duration)")
	flag.IntVar(&o.readers, "readers", 8, "goroutines calling AccessToken")
	flag.Int64Var(&o.maxReads, "reads", 20_000_000, "bound on AccessToken calls in all")
	flag.Float64Var(&o.readRate, "read-rate", 20000, "AccessToken calls per real second, all readers together (0: as fast as they go)")
	flag.IntVar(&o.gogc, "gogc", 50, "GOGC for the run (50: the sidecar's default)")
	flag.Int64Var(&o.memLimit, "memlimit", 0, "GOMEMLIMIT for the run, in MiB (0: none)")
	flag.IntVar(&o.concurrency, "concurrency", vault.DefaultConcurrency, "scheduler concurrency (default: the sidecar's)")
	flag.IntVar(&o.tokenBytes, "token-bytes", 128, "length of access tokens (refresh tokens: half); real ones run 40 (GitHub) to 250 (Google)")
	flag.Float64Var(&o.rate, "rate", 0, "refresh rate limit per simulated second (0: 2.5x the mean the connections need)")
	flag.StringVar(&o.dataDir, "data", "", "directory for the seeded bbolt file, reused across runs (default: a temporary one)")
	flag.BoolVar(&o.noSync, "nosync", false, "open the store without fsync on commit")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the run")
	flag.StringVar(&o.memprofile, "memprofile", "", "write a heap profile taken after startup, and one of the run to this path + .end")
	flag.BoolVar(&o.startupOnly, "startup-only", false, "measure the startup and memory, then stop")
	flag.StringVar(&o.probe, "probe", "", "path of a tokenvault binary: measure exec -> first health check and idle memory of the real sidecar (see probe.go), then stop")
	flag.BoolVar(&o.etcd, "etcd", false, "with -probe: also start the sidecar on a one-member etcd cluster on 127.0.0.1, empty and with the seeded connections migrated into it")
	flag.IntVar(&o.runs, "runs", 7, "with -probe: starts per setup")
	flag.DurationVar(&o.settle, "settle", 2*time.Second, "with -probe: idle time after the first health check before memory is read")
	flag.BoolVar(&o.fake, "fake", false, "internal: serve the loopback token endpoint and print its address")
	flag.DurationVar(&o.fakeLifetime, "fake-lifetime", time.Hour, "internal: expires_in of the loopback token endpoint")
	flag.StringVar(&o.etcdMember, "etcd-member", "", "internal: run a one-member etcd cluster with its data in this directory and print its client URL")
	flag.Parse()
	if o.etcdMember != "" {
		if err := serveEtcd(o.etcdMember); err != nil {
			fmt.Fprintln(os.Stderr, "etcd member:", err)
			os.Exit(1)
		}
		return
	}
	if o.fake {
		if err := serveFake(o.fakeLifetime, o.tokenBytes); err != nil {
			fmt.Fprintln(os.Stderr, "fake:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "tokenvault-bench:", err)
		os.Exit(1)
	}
}

// simClock is the simulated clock: epoch + scale * (real time since start).
type simClock struct {
	start time.Time // real
	scale float64
}

func (c *simClock) Now() time.Time {
	return epoch.Add(time.Duration(float64(time.Since(c.start)) * c.scale))
}

// After waits d of simulated time.
func (c *simClock) After(d time.Duration) <-chan time.Time {
	return time.After(time.Duration(float64(d) / c.scale))
}

// settable is the clock used while seeding: each connection is issued at
// a time of its own.
type settable struct{ t atomic.Int64 }

func (s *settable) Now() time.Time      { return time.Unix(0, s.t.Load()).UTC() }
func (s *settable) Set(t time.Time)     { s.t.Store(t.UnixNano()) }
func (s *settable) Add(d time.Duration) { s.t.Add(int64(d)) }

// benchProvider is the real generic provider against the loopback fake,
// except Exchange, which mints grants directly (the fake has no authorize
// endpoint: a grant's first refresh token is valid by construction). It
// counts refreshes per simulated and real second.
type benchProvider struct {
	vault.Provider
	now        func() time.Time
	lifetime   time.Duration
	tokenBytes int
	n          atomic.Int64

	clock     *simClock
	refreshes atomic.Int64
	failures  atomic.Int64
	perSim    []atomic.Int32 // by simulated second of the run
	perReal   []atomic.Int32 // by real second
}

func (p *benchProvider) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	g := "g" + strconv.FormatInt(p.n.Add(1), 36)
	return vault.Grant{Account: g, Tokens: []vault.Token{{
		AccessToken: pad("at."+g+".0.", p.tokenBytes), RefreshToken: pad("rt."+g+".0.", p.tokenBytes/2), TokenType: "Bearer",
		Expiry: p.now().Add(p.lifetime),
	}}}, nil
}

// Refresh counts each refresh request in the second it is sent: what the
// provider sees.
func (p *benchProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	if c := p.clock; c != nil {
		if i := int(c.Now().Sub(epoch) / time.Second); i >= 0 && i < len(p.perSim) {
			p.perSim[i].Add(1)
		}
		if i := int(time.Since(c.start) / time.Second); i >= 0 && i < len(p.perReal) {
			p.perReal[i].Add(1)
		}
	}
	out, err := p.Provider.Refresh(ctx, g, cred)
	if err != nil {
		p.failures.Add(1)
		return out, err
	}
	p.refreshes.Add(1)
	return out, nil
}

func run(o options) error {
	if o.connections <= 0 || o.lifetime <= 0 || o.duration <= 0 {
		return errors.New("-connections, -lifetime and -duration must be positive")
	}
	if o.etcd && o.probe == "" {
		return errors.New("-etcd goes with -probe")
	}
	if o.scale <= 0 {
		o.scale = float64(o.lifetime) / float64(o.duration)
	}
	// A connection is refreshed at 65% to 75% of its lifetime: this is
	// the mean rate the schedule needs, per simulated second.
	need := float64(o.connections) / (0.7 * o.lifetime.Seconds())
	if o.rate <= 0 {
		o.rate = 2.5 * need
	}
	burst := max(int(o.rate/20), 5)
	ctx := context.Background()

	fakeAddr, fakeStats, stopFake, err := startFake(o.lifetime, o.tokenBytes)
	if err != nil {
		return err
	}
	defer stopFake()

	dir := o.dataDir
	if dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	} else {
		if dir, err = os.MkdirTemp("", "tokenvault-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	mk, err := seed(ctx, o, dir, fakeAddr)
	if err != nil {
		return err
	}
	if o.probe != "" {
		_, err := probeStartup(o, dir, fakeAddr)
		return err
	}
	runPath := filepath.Join(dir, "run.db")
	if err := copyFile(filepath.Join(dir, "seed.db"), runPath); err != nil {
		return err
	}
	defer os.Remove(runPath)

	// The measured run.
	clock := &simClock{scale: o.scale}
	simSeconds := int(o.duration.Seconds()*o.scale) + 2
	bp := &benchProvider{lifetime: o.lifetime, tokenBytes: o.tokenBytes, clock: clock,
		perSim: make([]atomic.Int32, simSeconds), perReal: make([]atomic.Int32, int(o.duration.Seconds())+2)}
	if bp.Provider, err = loopbackProvider(fakeAddr, clock.Now, o.concurrency); err != nil {
		return err
	}
	bp.now = clock.Now
	if o.cpuprofile != "" {
		stop, err := startCPUProfile(o.cpuprofile)
		if err != nil {
			return err
		}
		defer stop()
	}
	debug.SetGCPercent(o.gogc)
	if o.memLimit > 0 {
		debug.SetMemoryLimit(o.memLimit << 20)
	}
	cpu0 := cpuTime()
	runtime.GC()

	clock.start = time.Now()
	st, err := bolt.Open(runPath, bolt.Options{NoSync: o.noSync})
	if err != nil {
		return err
	}
	defer st.Close()
	tBolt := time.Since(clock.start)
	kr, err := vault.OpenKeyring(ctx, st, mk)
	if err != nil {
		return err
	}
	tKeyring := time.Since(clock.start)
	if o.gogc == 50 {
		debug.SetGCPercent(400) // as the sidecar starts (startGOGC)
	}
	v, err := vault.Open(ctx, vault.Config{
		Store: st, Keyring: kr, Providers: map[string]vault.Provider{providerName: bp}, Now: clock.Now,
		RefreshPolicies: map[string]vault.RefreshPolicy{providerName: {RateLimit: o.rate, Burst: burst}},
		Logger:          slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	debug.SetGCPercent(o.gogc)
	if err != nil {
		return err
	}
	debug.FreeOSMemory() // as the sidecar does after opening
	tOpen := time.Since(clock.start)
	if _, err := v.RecoverInterrupted(ctx); err != nil {
		return err
	}
	tRecover := time.Since(clock.start)
	sched := vault.NewScheduler(v, vault.SchedulerConfig{Concurrency: o.concurrency, After: clock.After})
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	schedDone := make(chan error, 1)
	go func() { schedDone <- sched.Run(runCtx) }()
	for sched.Stats().Scheduled < v.Len() {
		time.Sleep(100 * time.Microsecond)
	}
	startup := time.Since(clock.start)
	phases := fmt.Sprintf("bbolt open %v, keyring %v, vault.Open %v, RecoverInterrupted %v, schedule %v",
		tBolt.Round(time.Millisecond), (tKeyring - tBolt).Round(time.Millisecond), (tOpen - tKeyring).Round(time.Millisecond),
		(tRecover - tOpen).Round(time.Millisecond), (startup - tRecover).Round(time.Millisecond))
	heapAfterStartup := heapLive()
	rssAfterStartup := procStatus()["VmRSS"]
	if o.memprofile != "" {
		if err := writeHeapProfile(o.memprofile); err != nil {
			return err
		}
	}
	if o.startupOnly {
		st := procStatus()
		fmt.Printf("startup: %v for %d connections (%s); heap live %.1f MiB; RSS %s (RssAnon %s, RssFile %s), VmHWM %s\n",
			startup.Round(time.Millisecond), v.Len(), phases, float64(heapAfterStartup)/(1<<20), rssAfterStartup, st["RssAnon"], st["RssFile"], st["VmHWM"])
		// As the sidecar stops: the refreshes under way commit before the
		// store closes.
		cancel()
		if err := <-schedDone; !errors.Is(err, context.Canceled) {
			return err
		}
		return nil
	}

	// Readers: random connections, default min_valid (5 simulated
	// minutes), each answer checked against the simulated clock.
	// The ids are packed into one string: the load generator's own memory
	// is measured with the sidecar's, and a sidecar holds no such list.
	var packed strings.Builder
	ends := make([]int32, 0, v.Len())
	for after := ""; ; {
		page, next, err := v.List(ctx, vault.Filter{}, after, 500)
		if err != nil {
			return err
		}
		for _, c := range page {
			packed.WriteString(c.ID)
			ends = append(ends, int32(packed.Len()))
		}
		if next == "" {
			break
		}
		after = next
	}
	all := packed.String()
	idAt := func(i int) string {
		start := int32(0)
		if i > 0 {
			start = ends[i-1]
		}
		return all[start:ends[i]]
	}
	var reads, expired, readErrs atomic.Int64
	deadline := clock.start.Add(o.duration)
	stopSampler := peakSampler()
	var wg sync.WaitGroup
	for r := range o.readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			var pace time.Duration // between two calls of this reader
			if o.readRate > 0 {
				pace = time.Duration(float64(o.readers) / o.readRate * float64(time.Second))
			}
			next := time.Now()
			for time.Now().Before(deadline) && reads.Add(1) <= o.maxReads {
				if pace > 0 {
					if next = next.Add(pace); time.Until(next) > time.Millisecond {
						time.Sleep(time.Until(next))
					}
				}
				id := idAt(rng.IntN(len(ends)))
				tok, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: id})
				if err != nil {
					readErrs.Add(1)
					continue
				}
				if !tok.Expiry.After(clock.Now()) {
					expired.Add(1)
				}
			}
		})
	}
	wg.Wait()
	cancel()
	<-schedDone
	atPeak := stopSampler()
	wall := time.Since(clock.start)
	simElapsed := clock.Now().Sub(epoch)
	cpu := cpuTime() - cpu0
	ss := sched.Stats()
	fs := fakeStats()
	status := procStatus()
	heapAtEnd := heapLive()
	if o.memprofile != "" {
		// Allocations over the whole run, live heap at its end.
		if err := writeHeapProfile(o.memprofile + ".end"); err != nil {
			return err
		}
	}

	// Spread over the whole simulated seconds of the run.
	fullSim := min(int(simElapsed/time.Second), len(bp.perSim))
	maxSim, sumSim, maxAt := 0, 0, 0
	sims := make([]int, 0, fullSim)
	for i := 0; i < fullSim; i++ {
		n := int(bp.perSim[i].Load())
		if n > maxSim {
			maxSim, maxAt = n, i
		}
		sumSim += n
		sims = append(sims, n)
	}
	slices.Sort(sims)
	pct := func(q float64) int {
		if len(sims) == 0 {
			return 0
		}
		return sims[min(int(q*float64(len(sims))), len(sims)-1)]
	}
	fullReal := int(wall / time.Second)
	maxReal, sumReal := 0, 0
	for i := 0; i < fullReal && i < len(bp.perReal); i++ {
		n := int(bp.perReal[i].Load())
		maxReal = max(maxReal, n)
		sumReal += n
	}
	meanSim := float64(sumSim) / float64(max(fullSim, 1))
	meanReal := float64(sumReal) / float64(max(fullReal, 1))
	total := bp.refreshes.Load()
	reads.Store(min(reads.Load(), o.maxReads))

	sync := "fsync on every commit"
	if o.noSync {
		sync = "NO fsync (-nosync)"
	}
	fmt.Printf("tokenvault-bench: %d connections, access tokens live %v (simulated); %v real at %.0fx (1 real second = %.0f simulated seconds), %v simulated\n",
		o.connections, o.lifetime, wall.Round(time.Millisecond), o.scale, o.scale, simElapsed.Round(time.Second))
	fmt.Printf("  clock:     simulated from %s, drives the vault, the scheduler (timers, rate limit) and the provider's expiry\n", epoch.Format(time.RFC3339))
	fmt.Printf("  provider:  loopback token endpoint in a child process (127.0.0.1, HTTP/1.1 keep-alive), strict rotation and reuse detection, via providers.OAuth2\n")
	fmt.Printf("  store:     bbolt, %s; seeded with issue times spread over the last 70%% of a lifetime (a running system's steady state), %d-byte access and %d-byte refresh tokens\n", sync, o.tokenBytes, o.tokenBytes/2)
	fmt.Printf("  scheduler: concurrency %d, rate limit %.0f per simulated second, burst %d (mean need %.1f)\n", o.concurrency, o.rate, burst, need)
	fmt.Printf("startup:     %v to open %d records and schedule %d (%s)\n",
		startup.Round(time.Millisecond), v.Len(), ss.Scheduled, phases)
	fmt.Printf("refreshes:   %d (scheduled %d, inline by readers %d), %.0f per real second, %.1f per simulated second; failed %d; provider saw %d refresh requests, %d reuses\n",
		total, ss.Refreshes, max(total-int64(ss.Refreshes), 0), float64(total)/wall.Seconds(), float64(total)/simElapsed.Seconds(),
		bp.failures.Load(), fs.Refreshes, fs.Reuse)
	fmt.Printf("spread:      refresh requests sent, per simulated second: mean %.1f, max %d at second %d (max/mean %.2f), p50 %d, p99 %d, p99.9 %d; per real second: mean %.0f, max %d (max/mean %.2f)\n",
		meanSim, maxSim, maxAt, float64(maxSim)/max(meanSim, 1e-9), pct(0.5), pct(0.99), pct(0.999), meanReal, maxReal, float64(maxReal)/max(meanReal, 1e-9))
	readPace := "unthrottled"
	if o.readRate > 0 {
		readPace = fmt.Sprintf("paced at %.0f/s", o.readRate)
	}
	fmt.Printf("served:      %d tokens to %d readers (%s, random connections, default min_valid), %d expired, %d errors\n",
		reads.Load()-readErrs.Load(), o.readers, readPace, expired.Load(), readErrs.Load())
	fmt.Printf("cpu:         %.1fs user+sys over %.1fs = %.2f cores (GOMAXPROCS %d)\n", cpu.Seconds(), wall.Seconds(), cpu.Seconds()/wall.Seconds(), runtime.GOMAXPROCS(0))
	limit := "none"
	if o.memLimit > 0 {
		limit = fmt.Sprintf("%d MiB", o.memLimit)
	}
	fmt.Printf("memory:      GOGC %d, GOMEMLIMIT %s; heap live after startup %.1f MiB, at end %.1f MiB; RSS after startup %s; peak RSS (VmHWM) %s; at end RssAnon %s, RssFile %s (bbolt's read-only mmap: clean page-cache pages)\n",
		o.gogc, limit, float64(heapAfterStartup)/(1<<20), float64(heapAtEnd)/(1<<20), rssAfterStartup, status["VmHWM"], status["RssAnon"], status["RssFile"])
	fmt.Printf("runtime:     %s\n", memClasses())
	fmt.Printf("at peak:     %s (sampled every 50ms)\n", atPeak)
	fmt.Printf("scheduler:   %+v\n", ss)
	return nil
}

// memClasses describes where the Go runtime's memory is at the end.
func memClasses() string {
	names := []string{
		"/memory/classes/heap/objects:bytes", "/memory/classes/heap/unused:bytes",
		"/memory/classes/heap/free:bytes", "/memory/classes/heap/released:bytes",
		"/memory/classes/heap/stacks:bytes", "/memory/classes/metadata/other:bytes",
		"/memory/classes/metadata/mspan/inuse:bytes", "/memory/classes/os-stacks:bytes",
		"/memory/classes/other:bytes", "/memory/classes/profiling/buckets:bytes",
	}
	samples := make([]metrics.Sample, len(names))
	for i, n := range names {
		samples[i].Name = n
	}
	metrics.Read(samples)
	var b strings.Builder
	for _, sm := range samples {
		if sm.Value.Kind() != metrics.KindUint64 {
			continue
		}
		name := strings.TrimSuffix(strings.TrimPrefix(sm.Name, "/memory/classes/"), ":bytes")
		fmt.Fprintf(&b, "%s %.1f MiB; ", name, float64(sm.Value.Uint64())/(1<<20))
	}
	return strings.TrimSuffix(b.String(), "; ")
}

// seed creates dir/seed.db with o.connections connections (unless one
// made with the same settings is there) and returns the master key.
func seed(ctx context.Context, o options, dir, fakeAddr string) (seal.MasterKey, error) {
	path, metaPath, keyPath := filepath.Join(dir, "seed.db"), filepath.Join(dir, "seed.json"), filepath.Join(dir, "master.key")
	meta := fmt.Sprintf(`{"connections":%d,"lifetime":%q,"epoch":%q,"events":"swept","token_bytes":%d,"record":"protobuf","freelist":"synced"}`, o.connections, o.lifetime, epoch.Format(time.RFC3339), o.tokenBytes)
	if b, err := os.ReadFile(metaPath); err == nil && string(b) == meta {
		if k, err := os.ReadFile(keyPath); err == nil {
			return seal.ParseMasterKey(k)
		}
	}
	os.Remove(path)
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		return mk, err
	}
	if err := os.WriteFile(keyPath, []byte(mk.Encode()), 0o600); err != nil {
		return mk, err
	}
	st, err := bolt.Open(path, bolt.Options{NoSync: true})
	if err != nil {
		return mk, err
	}
	defer st.Close()
	kr, err := vault.OpenKeyring(ctx, st, mk)
	if err != nil {
		return mk, err
	}
	clock := &settable{}
	clock.Set(epoch)
	bp := &benchProvider{now: clock.Now, lifetime: o.lifetime, tokenBytes: o.tokenBytes}
	if bp.Provider, err = loopbackProvider(fakeAddr, clock.Now, 1); err != nil {
		return mk, err
	}
	v, err := vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{providerName: bp}, Now: clock.Now})
	if err != nil {
		return mk, err
	}
	start := time.Now()
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range o.connections {
		// Issued between 0 and 70% of a lifetime before the epoch.
		clock.Set(epoch.Add(-time.Duration(rng.Float64() * 0.7 * float64(o.lifetime))))
		u, _, err := v.StartConnect(ctx, vault.ConnectRequest{Binding: "b", Owner: "user-" + strconv.Itoa(i), Provider: providerName})
		if err != nil {
			return mk, err
		}
		pu, _ := url.Parse(u)
		if _, err := v.CompleteConnect(ctx, vault.CallbackRequest{Binding: "b", Provider: providerName, State: pu.Query().Get("state"), Code: "code"}); err != nil {
			return mk, err
		}
		if (i+1)%20000 == 0 {
			fmt.Fprintf(os.Stderr, "seeded %d connections in %v\n", i+1, time.Since(start).Round(time.Second))
		}
	}
	// The connection.created events are past a running system's
	// retention: sweep them, as its sweeper would have.
	last, _ := v.LastEventSequence()
	for {
		n, err := v.SweepEvents(ctx, epoch.Add(time.Hour), last)
		if err != nil {
			return mk, err
		}
		if n == 0 {
			break
		}
	}
	return mk, os.WriteFile(metaPath, []byte(meta), 0o600)
}

// pad fills s up to n bytes.
func pad(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat("x", n-len(s))
}

// loopbackProvider is the generic OAuth 2.0 provider against the fake.
func loopbackProvider(addr string, now func() time.Time, conns int) (vault.Provider, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns + 8
	p, err := providers.NewOAuth2(providers.OAuth2Config{
		Name: providerName, ClientID: clientID, ClientSecret: clientSecret,
		AuthURL: "http://" + addr + "/authorize", TokenURL: "http://" + addr + "/token",
		RedirectURL: "http://127.0.0.1/callback", AuthStyle: providers.AuthStyleInHeader, PKCE: true,
		HTTPClient: &http.Client{Transport: tr}, Now: now,
	})
	if err != nil {
		return nil, err
	}
	return server.AdaptProvider(p), nil
}

type fakeCounts struct{ Refreshes, Reuse, Rejected int64 }

// startFake runs this program as the loopback token endpoint.
func startFake(lifetime time.Duration, tokenBytes int) (addr string, stats func() fakeCounts, stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return "", nil, nil, err
	}
	cmd := exec.Command(self, "-fake", "-fake-lifetime", lifetime.String(), "-token-bytes", strconv.Itoa(tokenBytes))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, nil, err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return "", nil, nil, fmt.Errorf("fake: %w", err)
	}
	addr = strings.TrimSpace(line)
	stats = func() fakeCounts {
		var c fakeCounts
		resp, err := http.Get("http://" + addr + "/stats")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&c)
			resp.Body.Close()
		}
		return c
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
	}
	return addr, stats, stop, nil
}

// serveFake serves a strict refresh-token endpoint on 127.0.0.1: refresh
// token rt.<grant>.<n> is good if n is the grant's current generation (0
// for a grant it has not seen: grants are minted by the bench, not here);
// each refresh rotates it, and an older one counts as reuse and kills the
// grant.
func serveFake(lifetime time.Duration, tokenBytes int) error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(l.Addr().String())
	var (
		mu      sync.Mutex
		current = map[string]int{}
		dead    = map[string]bool{}
		counts  fakeCounts
	)
	expiresIn := int64(lifetime / time.Second)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(counts)
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		oauthErr := func(status int, code string) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"error":%q}`, code)
		}
		if id, secret, ok := r.BasicAuth(); !ok || id != clientID || secret != clientSecret {
			oauthErr(http.StatusUnauthorized, "invalid_client")
			return
		}
		if r.ParseForm() != nil || r.PostForm.Get("grant_type") != "refresh_token" {
			oauthErr(http.StatusBadRequest, "unsupported_grant_type")
			return
		}
		parts := strings.Split(r.PostForm.Get("refresh_token"), ".")
		if len(parts) != 4 || parts[0] != "rt" {
			oauthErr(http.StatusBadRequest, "invalid_grant")
			return
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			oauthErr(http.StatusBadRequest, "invalid_grant")
			return
		}
		g := parts[1]
		mu.Lock()
		switch cur := current[g]; {
		case dead[g]:
			counts.Rejected++
			mu.Unlock()
			oauthErr(http.StatusBadRequest, "invalid_grant")
			return
		case n < cur:
			counts.Reuse++
			dead[g] = true
			mu.Unlock()
			oauthErr(http.StatusBadRequest, "invalid_grant")
			return
		case n > cur:
			counts.Rejected++
			mu.Unlock()
			oauthErr(http.StatusBadRequest, "invalid_grant")
			return
		}
		current[g] = n + 1
		counts.Refreshes++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		at := pad(fmt.Sprintf("at.%s.%d.", g, n+1), tokenBytes)
		rt := pad(fmt.Sprintf("rt.%s.%d.", g, n+1), tokenBytes/2)
		fmt.Fprintf(w, `{"access_token":%q,"refresh_token":%q,"token_type":"Bearer","expires_in":%d}`, at, rt, expiresIn)
	})
	return http.Serve(l, mux)
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	// Written back before the clock starts: the kernel's writeback of a
	// fresh 200+ MB copy would otherwise compete with the measured start.
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapLive() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// procStatus returns the memory lines of /proc/self/status ("VmHWM" ->
// "123456 kB" as "120.6 MiB").
func procStatus() map[string]string {
	out := map[string]string{}
	for k, kb := range procKB() {
		out[k] = fmt.Sprintf("%.1f MiB", kb/1024)
	}
	return out
}

// procKB returns the memory lines of /proc/self/status in kB.
func procKB() map[string]float64 {
	out := map[string]float64{}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !strings.HasSuffix(v, "kB") {
			continue
		}
		if kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64); err == nil {
			out[k] = kb
		}
	}
	return out
}

// peakSampler reads the process's RSS every 50 ms until stop is called,
// and returns what it was made of at the highest sample: the kernel's
// split (anonymous, file-backed) and the runtime's memory classes.
func peakSampler() (stop func() string) {
	done := make(chan struct{})
	result := make(chan string, 1)
	go func() {
		var peak float64
		var at string
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				result <- at
				return
			case <-t.C:
			}
			st := procKB()
			if st["VmRSS"] <= peak {
				continue
			}
			peak = st["VmRSS"]
			at = fmt.Sprintf("VmRSS %.1f MiB (RssAnon %.1f, RssFile %.1f); %s",
				st["VmRSS"]/1024, st["RssAnon"]/1024, st["RssFile"]/1024, memClasses())
		}
	}()
	return func() string { close(done); return <-result }
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
