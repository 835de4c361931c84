package etcd_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// benchVault opens a vault with n connections on the named store: "bolt"
// (a file with fsync, as in production) or "etcd" (one embedded member).
func benchVault(b *testing.B, kind string, n int) (*vault.Vault, []string, *testClock) {
	b.Helper()
	var st vault.Store
	switch kind {
	case "bolt":
		s, err := bolt.Open(filepath.Join(b.TempDir(), "v.db"), bolt.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		st = s
	case "etcd":
		c := etcdtest.Start(b, 1)
		st = openStore(b, etcd.Options{Endpoints: c.Endpoints(), Prefix: "bench/"})
	}
	mk, _ := seal.GenerateMasterKey()
	kr, err := vault.OpenKeyring(b.Context(), st, mk)
	if err != nil {
		b.Fatal(err)
	}
	clk := &testClock{t: time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)}
	p := &rotatingProvider{lifetime: time.Hour, now: clk.Now, live: map[string]bool{}}
	v, err := vault.Open(b.Context(), vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": p}, Now: clk.Now})
	if err != nil {
		b.Fatal(err)
	}
	r := &replica{v: v}
	var ids []string
	for i := range n {
		ids = append(ids, connectOn(b, r, nil, fmt.Sprint("user", i)).ID)
	}
	return v, ids, clk
}

// BenchmarkAccessToken is GetAccessToken's hot path (a valid resident
// token) on each store, in the same run: it never touches the store, so
// the ratio etcd/bolt should be 1.
func BenchmarkAccessToken(b *testing.B) {
	for _, kind := range []string{"bolt", "etcd"} {
		b.Run(kind, func(b *testing.B) {
			v, ids, _ := benchVault(b, kind, 100)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: ids[i%len(ids)], MinValid: time.Minute}); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
	}
}

// BenchmarkRefreshCommit is one whole refresh critical section with an
// instant provider (on etcd: fence, lease check, marker and grant
// commits, release), one at a time, on each store; it reports the p50 and
// p99 latency.
func BenchmarkRefreshCommit(b *testing.B) {
	for _, kind := range []string{"bolt", "etcd"} {
		b.Run(kind, func(b *testing.B) {
			v, ids, clk := benchVault(b, kind, 1)
			ctx := context.Background()
			var lat []time.Duration
			b.ResetTimer()
			for b.Loop() {
				clk.Add(3 * time.Second) // past a forced refresh's debounce
				start := time.Now()
				if _, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: ids[0], Force: true}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
