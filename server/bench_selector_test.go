package server_test

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// BenchmarkHotPathSelector measures GetAccessToken by selector (owner and
// provider, as applications call it) beside GetAccessToken by connection
// id, on the same sidecar child as BenchmarkHotPath, saturated, in short
// slices that alternate between the two so that the host's load falls on
// both alike. It prints QPS and the server's CPU per call of each, median
// (min–max) over the rounds, and reports their ratios. `make bench` runs it
// after BenchmarkHotPath; TOKENVAULT_BENCH_ROUNDS sets the rounds (default
// 5).
func BenchmarkHotPathSelector(b *testing.B) {
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
	defer debug.SetGCPercent(debug.SetGCPercent(400)) // as BenchmarkHotPath's load generator
	sidecar := startBenchChild(b, "sidecar")
	var cs []*grpc.ClientConn
	for range benchConns {
		c, err := grpc.NewClient(sidecar.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithPerRPCCredentials(benchBearer{}))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		cs = append(cs, c)
	}
	var rr atomic.Uint64
	client := func() tvv1.TokenVaultServiceClient {
		return tvv1.NewTokenVaultServiceClient(cs[rr.Add(1)%benchConns])
	}
	pid := sidecar.cmd.Process.Pid
	byID := &tvv1.GetAccessTokenRequest{ConnectionId: sidecar.id}
	// benchChild connects owner "bench" to provider "acme".
	bySel := &tvv1.GetAccessTokenRequest{Selector: &tvv1.ConnectionSelector{Owner: "bench", Provider: "acme"}}
	targets := []benchTarget{
		{"by-id", pid, func(ctx context.Context) error { _, err := client().GetAccessToken(ctx, byID); return err }},
		{"by-selector", pid, func(ctx context.Context) error { _, err := client().GetAccessToken(ctx, bySel); return err }},
	}
	for _, t := range targets { // warm up
		saturated(b, t, benchWorkers, 500*time.Millisecond)
	}
	const slices, slice = 8, 250 * time.Millisecond
	qps := map[string]series{}
	cpu := map[string]series{}
	b.ResetTimer()
	for range rounds {
		calls := map[string]int64{}
		wall := map[string]time.Duration{}
		used := map[string]time.Duration{}
		for i := range slices {
			for j := range targets {
				t := targets[(i+j)%len(targets)]
				n, w, c := saturated(b, t, benchWorkers, slice)
				calls[t.name] += n
				wall[t.name] += w
				used[t.name] += c
			}
		}
		for _, t := range targets {
			qps[t.name] = append(qps[t.name], float64(calls[t.name])/wall[t.name].Seconds())
			cpu[t.name] = append(cpu[t.name], float64(used[t.name].Nanoseconds())/1e3/float64(calls[t.name]))
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
	w := os.Stdout
	fmt.Fprintf(w, "\nGetAccessToken by selector vs by id: %d rounds; c=%d over %d connections; median (min–max) of the rounds\n", rounds, benchWorkers, benchConns)
	fmt.Fprintf(w, "%-12s %-28s %-30s\n", "", "QPS (saturated)", "server CPU µs/call (saturated)")
	for _, t := range targets {
		fmt.Fprintf(w, "%-12s %-28s %-30s\n", t.name, qps[t.name].format("%.0f"), cpu[t.name].format("%.1f"))
	}
	cr, qr := ratio(cpu["by-selector"], cpu["by-id"]), ratio(qps["by-selector"], qps["by-id"])
	fmt.Fprintf(w, "selector/id: CPU %s, QPS %s\n", cr.format("%.2f"), qr.format("%.2f"))
	b.ReportMetric(cr.median(), "cpu/by-id")
	b.ReportMetric(qr.median(), "qps/by-id")
}
