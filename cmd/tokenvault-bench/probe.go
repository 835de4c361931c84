package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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
}

// probeRun is what one start measured.
type probeRun struct {
	ready                 time.Duration // exec -> first SERVING health answer
	cpu                   time.Duration // the process's CPU time by then
	rss, rssAnon, rssFile float64       // KiB, idle after settle
	rssAtReady            float64       // KiB, as soon as it answered
}

// probeStartup measures the real tokenvault binary as a Kubernetes probe
// sees it: the time from exec to the first gRPC health check answered
// SERVING (polled every millisecond on 127.0.0.1) and the CPU time the
// process used by then, then its resident memory
// once it has been idle for o.settle. It starts the binary o.runs times in
// each of three setups, alternating: dev mode on an empty data dir
// (`serve --dev`), a configured sidecar on an empty store, and the same on
// a copy of the seeded store of o.connections connections. Resident memory
// per connection is the difference of the last two's medians.
func probeStartup(o options, dir, fakeAddr string) error {
	bin, err := filepath.Abs(o.probe)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("-probe: %w (build it with: make build)", err)
	}
	seedPath, keyPath := filepath.Join(dir, "seed.db"), filepath.Join(dir, "master.key")
	setups := []probeSetup{{"dev", 0, true}, {"empty", 0, false}, {strconv.Itoa(o.connections), o.connections, false}}
	results := make([][]probeRun, len(setups))
	for run := range o.runs {
		for i, s := range setups {
			r, err := probeOnce(bin, s, seedPath, keyPath, fakeAddr, o.settle)
			if err != nil {
				return fmt.Errorf("%s run %d: %w", s.name, run+1, err)
			}
			results[i] = append(results[i], r)
			fmt.Printf("%-8s run %d: ready %7.1f ms, CPU %6.1f ms; RSS at ready %6.1f MiB; idle RSS %6.1f MiB (anon %6.1f, file %5.1f)\n",
				s.name, run+1, ms(r.ready), ms(r.cpu), r.rssAtReady/1024, r.rss/1024, r.rssAnon/1024, r.rssFile/1024)
		}
	}
	fmt.Printf("\nexec -> first SERVING health check, %d runs each: median (min–max)\n", o.runs)
	med := make([]float64, len(setups))
	for i, s := range setups {
		ready := make([]float64, 0, o.runs)
		cpu := make([]float64, 0, o.runs)
		rss := make([]float64, 0, o.runs)
		file := make([]float64, 0, o.runs)
		for _, r := range results[i] {
			ready = append(ready, ms(r.ready))
			cpu = append(cpu, ms(r.cpu))
			rss = append(rss, r.rss/1024)
			file = append(file, r.rssFile/1024)
		}
		med[i] = median(rss)
		connections := fmt.Sprintf("%d connections", s.connections)
		if s.dev {
			connections = "dev mode"
		}
		fmt.Printf("%-18s ready %s ms, CPU by then %s ms; idle RSS %s MiB, of it file-backed %s MiB\n", connections,
			spread(ready, "%.1f"), spread(cpu, "%.0f"), spread(rss, "%.1f"), spread(file, "%.1f"))
	}
	if o.connections > 0 {
		fmt.Printf("resident memory per connection (idle RSS medians, %d connections against none): %.0f bytes\n",
			o.connections, (med[2]-med[1])*1024*1024/float64(o.connections))
	}
	return nil
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

// freePort returns a port on 127.0.0.1 nobody listens on now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func probeOnce(bin string, s probeSetup, seedPath, keyPath, fakeAddr string, settle time.Duration) (probeRun, error) {
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
	grpcAddr, err := freePort()
	if err != nil {
		return r, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return r, err
	}
	args := []string{"serve", "--grpc-addr", grpcAddr, "--public-addr", httpAddr, "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
		"--data-dir", data, "--log-level", "error"}
	if s.dev {
		args = append(args, "--dev")
	} else {
		if s.connections > 0 {
			if err := copyFile(seedPath, filepath.Join(data, "tokenvault.db")); err != nil {
				return r, err
			}
			if err := os.Chmod(filepath.Join(data, "tokenvault.db"), 0o600); err != nil {
				return r, err
			}
		}
		key, err := os.ReadFile(keyPath)
		if err != nil {
			return r, err
		}
		mkPath := filepath.Join(runDir, "master.key")
		if err := os.WriteFile(mkPath, key, 0o600); err != nil {
			return r, err
		}
		// The provider of the seeded connections. Their tokens expire in
		// the seed's simulated 2030: nothing is refreshed while measured.
		cfg := fmt.Sprintf(`master_key_file: %s
providers:
  %s:
    kind: oauth2
    client_id: %s
    client_secret_env: TOKENVAULT_PROBE_CLIENT_SECRET
    auth_url: http://%s/authorize
    token_url: http://%s/token
    auth_style: header
`, mkPath, providerName, clientID, fakeAddr, fakeAddr)
		cfgPath := filepath.Join(runDir, "tokenvault.yaml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
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
			break
		}
		select {
		case err := <-exited:
			return r, fmt.Errorf("exited before serving (%v): %s", err, stderr.String())
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
	time.Sleep(settle)
	st = statusOf(cmd.Process.Pid)
	r.rss, r.rssAnon, r.rssFile = st["VmRSS"], st["RssAnon"], st["RssFile"]
	return r, stop()
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
