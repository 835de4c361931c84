package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// exeReadOnly returns the size of process pid's read-only mappings of its
// executable, and how much of them is resident, in bytes (from
// /proc/PID/smaps).
func exeReadOnly(t *testing.T, pid int, exe string) (size, rss int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if !strings.HasSuffix(fs[0], ":") {
			in = len(fs) >= 6 && fs[5] == exe && (fs[1] == "r-xp" || fs[1] == "r--p")
			continue
		}
		if !in || len(fs) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Size:":
			size += n << 10
		case "Rss:":
			rss += n << 10
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return size, rss
}

// TestServe_ReleasesExecutablePages: soon after the real binary starts
// serving, its code and read-only data leave the resident set
// (cmd/tokenvault/internal/execmem), and it serves on: health checks, a connect flow and
// tokens.
func TestServe_ReleasesExecutablePages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildSidecar(t)
	dir := t.TempDir()
	dataDir, readyFile := filepath.Join(dir, "data"), filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve", "--dev", "--data-dir", dataDir,
		"--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0",
		"--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--ready-file", readyFile)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = &syncBuffer{}, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cancel()
		<-exited
		if t.Failed() {
			t.Logf("sidecar logs:\n%s", logs)
		}
	})

	var r ready
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b, err := os.ReadFile(readyFile); err == nil && len(b) > 0 {
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("exited before serving: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("not serving after 20 s")
		}
	}
	r.AppKey = readKey(t, filepath.Join(dataDir, "application.key"))
	devKeys.Store(r.GRPCAddr, r)
	t.Cleanup(func() { devKeys.Delete(r.GRPCAddr) })

	// Released half a second into serving; a dev-mode start leaves nine
	// tenths of them resident, and serving maps back a small part.
	pid := cmd.Process.Pid
	var size, rss int64
	for deadline := time.Now().Add(20 * time.Second); ; {
		size, rss = exeReadOnly(t, pid, bin)
		if size == 0 {
			t.Fatalf("no read-only mapping of %s in /proc/%d/smaps", bin, pid)
		}
		if rss < size/4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20 s into serving, %d of the executable's %d KiB of code and read-only data are resident; want under a quarter", rss>>10, size>>10)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("executable's code and read-only data: %d KiB, %d KiB resident after the release", size>>10, rss>>10)

	// It serves on, reading its code and data back from the page cache.
	hc, err := healthpb.NewHealthClient(dialKey(t, r.GRPCAddr, "")).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", hc, err)
	}
	id := connectDev(t, r)
	tok, err := dialTest(t, r.GRPCAddr).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil || tok.GetAccessToken() == "" {
		t.Fatalf("GetAccessToken = %v, %v", tok, err)
	}
	_, after := exeReadOnly(t, pid, bin)
	t.Logf("after a connect flow and a token: %d KiB resident", after>>10)
}
