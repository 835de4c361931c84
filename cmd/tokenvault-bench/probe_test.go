package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestMain lets the test binary be the bench's child processes (the
// loopback token endpoint, the etcd member), as the bench execs itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "-fake" || os.Args[1] == "-etcd-member") {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// tokenvaultBin is $TOKENVAULT_BIN (make test passes the binary it built),
// else one built from the main module for this test.
func tokenvaultBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TOKENVAULT_BIN"); p != "" {
		p, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	bin := filepath.Join(t.TempDir(), "tokenvault")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tokenvault")
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building tokenvault: %v\n%s", err, out)
	}
	return bin
}

// TestProbeEtcd runs the -probe -etcd path once on a small seed: the real
// binary migrates the seeded bbolt store into a real etcd member and
// starts on it, and every start serves the connections it is labelled
// with (probeOnce checks /metrics).
func TestProbeEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real sidecar five times and an etcd member")
	}
	bin := tokenvaultBin(t)
	o := options{connections: 200, lifetime: time.Hour, tokenBytes: 128, probe: bin, etcd: true,
		runs: 1, settle: 100 * time.Millisecond}
	fakeAddr, _, stopFake, err := startFake(o.lifetime, o.tokenBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer stopFake()
	dir := t.TempDir()
	if _, err := seed(context.Background(), o, dir, fakeAddr); err != nil {
		t.Fatal(err)
	}
	results, err := probeStartup(o, dir, fakeAddr)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 6 {
		t.Fatalf("%d setups measured, want 6 (the floor, dev, bbolt empty and seeded, etcd empty and seeded)", len(results))
	}
	if !results[0].setup.floor {
		t.Fatalf("first setup %+v, want the floor", results[0].setup)
	}
	last := results[5]
	if !last.setup.etcd || last.setup.connections != o.connections {
		t.Fatalf("last setup %+v, want etcd with %d connections", last.setup, o.connections)
	}
	for _, res := range results {
		if len(res.runs) != 1 {
			t.Fatalf("%s: %d runs, want 1", res.setup.name, len(res.runs))
		}
		if r := res.runs[0]; r.ready <= 0 || r.rss <= 0 {
			t.Errorf("%s: ready %v, idle RSS %v KiB: want both positive", res.setup.name, r.ready, r.rss)
		}
	}
	for _, res := range results[1:] {
		want := float64(res.runs[0].ready) / float64(results[0].runs[0].ready)
		if got := floorRatios(results[0], res); len(got) != 1 || got[0] != want {
			t.Errorf("%s: ratios to the floor %v, want [%v]", res.setup.name, got, want)
		}
	}
}

// TestProbeFloor: the floor is a bare gRPC server, not the sidecar: it
// answers health SERVING, and it has no /metrics (probeOnce skips the
// connections check for it), so a start of the sidecar can never be
// counted as the floor's.
func TestProbeFloor(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the floor")
	}
	floor, err := buildFloor(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	env := probeEnv{bin: "/nonexistent/tokenvault", floorBin: floor, settle: 10 * time.Millisecond}
	r, err := probeOnce(env, probeSetup{name: "floor", floor: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.ready <= 0 || r.rss <= 0 {
		t.Fatalf("floor: ready %v, idle RSS %v KiB: want both positive", r.ready, r.rss)
	}
}

// TestProbePortTaken: a start whose chosen port another process took
// meanwhile is told apart (errPortTaken), so that probeStartup makes it
// again instead of failing a long run.
func TestProbePortTaken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the real sidecar")
	}
	bin := tokenvaultBin(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	defer func(p func() (string, error)) { probePort = p }(probePort)
	calls := 0
	probePort = func() (string, error) {
		if calls++; calls == 3 { // the metrics listener's
			return taken.Addr().String(), nil
		}
		return freePort()
	}
	env := probeEnv{bin: bin, settle: 10 * time.Millisecond}
	if _, err := probeOnce(env, probeSetup{name: "dev", dev: true}); !errors.Is(err, errPortTaken) {
		t.Fatalf("start on a taken port: %v, want errPortTaken", err)
	}
	if _, err := probeOnce(env, probeSetup{name: "dev", dev: true}); err != nil {
		t.Fatalf("start on free ports: %v", err)
	}
}
