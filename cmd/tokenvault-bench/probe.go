package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// probeSetup is one way of starting the real binary.
type probeSetup struct {
	name        string
	connections int  // in the store it starts on
	dev         bool // serve --dev on an empty data dir
	etcd        bool // on the etcd member (-etcd), not a bbolt file
	floor       bool // not the sidecar: the bare grpc-go server of ./floor
}

// label names the setup in the summary.
func (s probeSetup) label() string {
	switch {
	case s.floor:
		return "floor (bare grpc-go)"
	case s.dev:
		return "dev mode"
	case s.etcd:
		return fmt.Sprintf("etcd, %d connections", s.connections)
	}
	return fmt.Sprintf("bbolt, %d connections", s.connections)
}

// probeRun is what one start measured.
type probeRun struct {
	ready                 time.Duration // exec -> first SERVING health answer
	cpu                   time.Duration // the process's CPU time by then
	etcdCPU               time.Duration // the etcd member's CPU time from exec to then
	rss, rssAnon, rssFile float64       // KiB, idle after settle
	rssAtReady            float64       // KiB, as soon as it answered
}

// probeResult is the runs of one setup.
type probeResult struct {
	setup probeSetup
	runs  []probeRun
}

// probeEnv is what every start of a probe shares.
type probeEnv struct {
	bin, seedPath, keyPath, fakeAddr string
	floorBin                         string // the floor's binary (buildFloor)
	settle                           time.Duration
	etcd                             *etcdMember // with -etcd
}

// etcdPrefix is where the seeded connections are migrated on the etcd
// member; an empty store's start gets a prefix of its own each run.
const etcdPrefix = "probe/"

// emptyPrefixes numbers the empty prefixes: each start on an empty etcd
// store has one never used before.
var emptyPrefixes atomic.Int64

// probeStartup measures the real tokenvault binary as a Kubernetes probe
// sees it: the time from exec to the first gRPC health check answered
// SERVING (polled every millisecond on 127.0.0.1) and the CPU time the
// process used by then, then its resident memory
// once it has been idle for o.settle. It starts the binary o.runs times in
// each of three setups, alternating: dev mode on an empty data dir
// (`serve --dev`), a configured sidecar on an empty store, and the same on
// a copy of the seeded store of o.connections connections. Resident memory
// per connection is the difference of the last two's medians.
//
// Each round of the rotation starts with the floor: a bare grpc-go server
// serving only health (./floor, built for the run), started and polled the
// same way. Every start of the sidecar is reported as a ratio to the
// floor's start of the same round, so that a figure says what the sidecar
// adds to what any Go gRPC server costs to start on the machine at the
// time, whatever the machine and its load.
//
// With o.etcd it starts a one-member etcd cluster on 127.0.0.1 (etcd.go),
// copies the seeded store into it with the binary's own `store migrate`,
// and adds two setups to the rotation: a sidecar configured with
// `store: {kind: etcd}` on an empty prefix and on the migrated one. It also
// reads the CPU the etcd member spent while the sidecar started (serving
// its reads). Every start's connections are checked on its /metrics
// (tokenvault_connections), so that a figure is never one of a store
// other than the one it is labelled with.
func probeStartup(o options, dir, fakeAddr string) ([]probeResult, error) {
	bin, err := filepath.Abs(o.probe)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("-probe: %w (build it with: make build)", err)
	}
	env := probeEnv{bin: bin, seedPath: filepath.Join(dir, "seed.db"), keyPath: filepath.Join(dir, "master.key"),
		fakeAddr: fakeAddr, settle: o.settle}
	floorDir, err := os.MkdirTemp("", "tokenvault-probe-floor-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(floorDir)
	if env.floorBin, err = buildFloor(floorDir); err != nil {
		return nil, err
	}
	setups := []probeSetup{{name: "floor", floor: true}, {name: "dev", dev: true}, {name: "empty"},
		{name: strconv.Itoa(o.connections), connections: o.connections}}
	if o.etcd {
		etcdDir, err := os.MkdirTemp("", "tokenvault-probe-etcd-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(etcdDir)
		if env.etcd, err = startEtcd(etcdDir); err != nil {
			return nil, err
		}
		defer env.etcd.stop()
		if err := migrateToEtcd(env, o.connections); err != nil {
			return nil, err
		}
		setups = append(setups, probeSetup{name: "etcd empty", etcd: true},
			probeSetup{name: "etcd " + strconv.Itoa(o.connections), connections: o.connections, etcd: true})
	}
	results := make([]probeResult, len(setups))
	for i, s := range setups {
		results[i].setup = s
	}
	for run := range o.runs {
		for i, s := range setups {
			r, err := probeOnce(env, s)
			for try := 1; errors.Is(err, errPortTaken) && try < 5; try++ {
				r, err = probeOnce(env, s)
			}
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", s.name, run+1, err)
			}
			results[i].runs = append(results[i].runs, r)
			etcdCPU := ""
			if s.etcd {
				etcdCPU = fmt.Sprintf(" (etcd member %6.1f ms)", ms(r.etcdCPU))
			}
			fmt.Printf("%-12s run %d: ready %7.1f ms, CPU %6.1f ms%s; RSS at ready %6.1f MiB; idle RSS %6.1f MiB (anon %6.1f, file %5.1f)\n",
				s.name, run+1, ms(r.ready), ms(r.cpu), etcdCPU, r.rssAtReady/1024, r.rss/1024, r.rssAnon/1024, r.rssFile/1024)
		}
	}
	fmt.Printf("\nexec -> first SERVING health check, %d runs each: median (min–max)\n", o.runs)
	med := make([]float64, len(setups))
	for i, res := range results {
		s := res.setup
		var ready, cpu, etcdCPU, atReady, rss, file []float64
		for _, r := range res.runs {
			atReady = append(atReady, r.rssAtReady/1024)
			ready = append(ready, ms(r.ready))
			cpu = append(cpu, ms(r.cpu))
			etcdCPU = append(etcdCPU, ms(r.etcdCPU))
			rss = append(rss, r.rss/1024)
			file = append(file, r.rssFile/1024)
		}
		med[i] = median(rss)
		label := s.label()
		member := ""
		if s.etcd {
			member = fmt.Sprintf(" (etcd member %s ms)", spread(etcdCPU, "%.0f"))
		}
		fmt.Printf("%-25s ready %s ms, CPU by then %s ms%s; RSS then %s MiB; idle RSS %s MiB, of it file-backed %s MiB\n", label,
			spread(ready, "%.1f"), spread(cpu, "%.0f"), member, spread(atReady, "%.1f"), spread(rss, "%.1f"), spread(file, "%.1f"))
	}
	fmt.Printf("\nexec -> first SERVING health check against the floor's start of the same round, %d rounds: median (min–max)\n", o.runs)
	for _, res := range results[1:] {
		fmt.Printf("%-25s %s× the floor\n", res.setup.label(), spread(floorRatios(results[0], res), "%.2f"))
	}
	if o.connections > 0 {
		fmt.Printf("resident memory per connection (idle RSS medians, %d connections against none): bbolt %.0f bytes",
			o.connections, (med[3]-med[2])*1024*1024/float64(o.connections))
		if o.etcd {
			fmt.Printf(", etcd %.0f bytes", (med[5]-med[4])*1024*1024/float64(o.connections))
		}
		fmt.Println()
	}
	return results, nil
}

// floorRatios pairs each start of res with the floor's start of the same
// round (the rotation starts each round with the floor) and returns the
// ratios of their times to first health check.
func floorRatios(floor, res probeResult) []float64 {
	ratios := make([]float64, 0, len(res.runs))
	for i, r := range res.runs {
		if i < len(floor.runs) && floor.runs[i].ready > 0 {
			ratios = append(ratios, float64(r.ready)/float64(floor.runs[i].ready))
		}
	}
	return ratios
}

// floorPkg is the floor's main package: a bare grpc-go server serving
// health.
const floorPkg = "github.com/tokenvault/tokenvault/cmd/tokenvault-bench/floor"

// buildFloor builds the floor into dir with the go command on PATH, the
// way make build builds the sidecar (CGO_ENABLED=0), and returns its path.
// It runs where the bench is run from: inside the module.
func buildFloor(dir string) (string, error) {
	out := filepath.Join(dir, "floor")
	cmd := exec.Command("go", "build", "-o", out, floorPkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the floor (%s): %w: %s", floorPkg, err, b)
	}
	return out, nil
}

// migrateToEtcd copies the seeded store to the etcd member under
// etcdPrefix with the binary's own `tokenvault store migrate` (from a copy:
// the command opens its source read-write), and checks that it copied
// every connection.
func migrateToEtcd(env probeEnv, connections int) error {
	runDir, err := os.MkdirTemp("", "tokenvault-probe-migrate-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(runDir)
	from := filepath.Join(runDir, "tokenvault.db")
	if err := copyFile(env.seedPath, from); err != nil {
		return err
	}
	cfgPath, err := writeProbeConfig(env, runDir, etcdPrefix)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, env.bin, "store", "migrate", "--from", from, "--to", cfgPath)
	cmd.Env = append(os.Environ(), "TOKENVAULT_PROBE_CLIENT_SECRET="+clientSecret)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("store migrate: %w: %s", err, out)
	}
	var records, copied int
	if _, err := fmt.Sscanf(string(out), "copied %d records (%d connections)", &records, &copied); err != nil || copied != connections {
		return fmt.Errorf("store migrate: want %d connections copied, got: %s", connections, out)
	}
	fmt.Printf("etcd: one member on 127.0.0.1 (fsync on), a child process; tokenvault store migrate: %d records (%d connections) in %v\n",
		records, copied, time.Since(start).Round(time.Millisecond))
	return nil
}

// writeProbeConfig writes runDir/tokenvault.yaml, with a copy of the
// master key beside it, for the provider of the seeded connections (their
// tokens expire in the seed's simulated 2030: nothing is refreshed while
// measured), and with a store block naming the etcd member and prefix if
// prefix is not empty.
func writeProbeConfig(env probeEnv, runDir, prefix string) (string, error) {
	key, err := os.ReadFile(env.keyPath)
	if err != nil {
		return "", err
	}
	mkPath := filepath.Join(runDir, "master.key")
	if err := os.WriteFile(mkPath, key, 0o600); err != nil {
		return "", err
	}
	cfg := fmt.Sprintf(`master_key_file: %s
providers:
  %s:
    kind: oauth2
    client_id: %s
    client_secret_env: TOKENVAULT_PROBE_CLIENT_SECRET
    auth_url: http://%s/authorize
    token_url: http://%s/token
    auth_style: header
`, mkPath, providerName, clientID, env.fakeAddr, env.fakeAddr)
	if prefix != "" {
		cfg += fmt.Sprintf(`store:
  kind: etcd
  endpoints: [%s]
  prefix: %q
`, env.etcd.endpoint, prefix)
	}
	cfgPath := filepath.Join(runDir, "tokenvault.yaml")
	return cfgPath, os.WriteFile(cfgPath, []byte(cfg), 0o600)
}

func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

func median(xs []float64) float64 {
	c := slices.Clone(xs)
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// spread is "median (min–max)".
func spread(xs []float64, f string) string {
	return fmt.Sprintf(f+" ("+f+"–"+f+")", median(xs), slices.Min(xs), slices.Max(xs))
}

// errPortTaken is a start that failed because another process took one of
// the ports freePort chose between the choice and the start (the machine
// is shared): the start is made again on other ports.
var errPortTaken = errors.New("a port was taken meanwhile")

// probePort picks the ports of a probed start (a test takes one first).
var probePort = freePort

// freePort returns a port on 127.0.0.1 nobody listens on now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func probeOnce(env probeEnv, s probeSetup) (probeRun, error) {
	var r probeRun
	runDir, err := os.MkdirTemp("", "tokenvault-probe-")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(runDir)
	data := filepath.Join(runDir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return r, err
	}
	grpcAddr, err := probePort()
	if err != nil {
		return r, err
	}
	httpAddr, err := probePort()
	if err != nil {
		return r, err
	}
	metricsAddr, err := probePort()
	if err != nil {
		return r, err
	}
	args := []string{"serve", "--grpc-addr", grpcAddr, "--public-addr", httpAddr, "--health-addr", "127.0.0.1:0", "--metrics-addr", metricsAddr,
		"--data-dir", data, "--log-level", "error"}
	bin := env.bin
	switch {
	case s.floor:
		bin, args = env.floorBin, []string{"-addr", grpcAddr}
	case s.dev:
		args = append(args, "--dev")
	case s.etcd:
		prefix := etcdPrefix
		if s.connections == 0 {
			prefix = fmt.Sprintf("probe-empty-%d/", emptyPrefixes.Add(1))
		}
		cfgPath, err := writeProbeConfig(env, runDir, prefix)
		if err != nil {
			return r, err
		}
		args = append(args, "--config", cfgPath)
	default:
		if s.connections > 0 {
			if err := copyFile(env.seedPath, filepath.Join(data, "tokenvault.db")); err != nil {
				return r, err
			}
			if err := os.Chmod(filepath.Join(data, "tokenvault.db"), 0o600); err != nil {
				return r, err
			}
		}
		cfgPath, err := writeProbeConfig(env, runDir, "")
		if err != nil {
			return r, err
		}
		args = append(args, "--config", cfgPath)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = runDir // dev mode writes nothing outside --data-dir; be sure
	cmd.Env = append(os.Environ(), "TOKENVAULT_PROBE_CLIENT_SECRET="+clientSecret)
	var stderr strings.Builder
	cmd.Stderr = &stderr

	// A probe's client: reconnects every millisecond until the sidecar
	// answers.
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Millisecond, Multiplier: 1, MaxDelay: time.Millisecond},
			MinConnectTimeout: 10 * time.Second,
		}))
	if err != nil {
		return r, err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)

	var etcdCPU0 time.Duration
	if s.etcd {
		etcdCPU0 = cpuOf(env.etcd.pid)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return r, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return nil
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("did not stop within 20 s of SIGTERM")
		}
	}
	deadline := start.Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			r.ready = time.Since(start)
			r.cpu = cpuOf(cmd.Process.Pid)
			if s.etcd {
				r.etcdCPU = cpuOf(env.etcd.pid) - etcdCPU0
			}
			break
		}
		select {
		case err := <-exited:
			if strings.Contains(stderr.String(), "address already in use") {
				err = fmt.Errorf("%w: %v", errPortTaken, err)
			}
			return r, fmt.Errorf("exited before serving (%w): %s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return r, fmt.Errorf("not serving after 60 s: %s", stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
	st := statusOf(cmd.Process.Pid)
	r.rssAtReady = st["VmRSS"]
	time.Sleep(env.settle)
	st = statusOf(cmd.Process.Pid)
	r.rss, r.rssAnon, r.rssFile = st["VmRSS"], st["RssAnon"], st["RssFile"]
	// After the memory is read: the scrape allocates.
	if s.floor {
		return r, stop()
	}
	n, err := connectionsServed(metricsAddr)
	if err == nil && n != s.connections {
		err = fmt.Errorf("serves %d connections, want %d", n, s.connections)
	}
	if serr := stop(); err == nil {
		err = serr
	}
	return r, err
}

// connectionsServed sums the sidecar's tokenvault_connections gauges.
func connectionsServed(metricsAddr string) (int, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("/metrics: %s", resp.Status)
	}
	n, seen := 0, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "tokenvault_connections{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, fmt.Errorf("/metrics: %q", line)
		}
		n += int(v)
		seen = true
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	if !seen {
		return 0, errors.New("/metrics: no tokenvault_connections")
	}
	return n, nil
}

// cpuOf returns the user+system CPU time process pid has used (to the
// kernel's 10 ms tick): what the start cost, whatever the host's load did
// to its wall time.
func cpuOf(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// statusOf returns the kB figures of /proc/PID/status.
func statusOf(pid int) map[string]float64 {
	out := map[string]float64{}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseFloat(f[0], 64)
			out[k] = n
		}
	}
	return out
}
