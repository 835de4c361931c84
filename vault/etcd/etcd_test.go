package etcd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
	"github.com/tokenvault/tokenvault/vault/storetest"
)

func openStore(t testing.TB, opts etcd.Options) *etcd.Store {
	t.Helper()
	st, err := etcd.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open(%v) = %v", opts.Endpoints, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func TestStore_Conformance(t *testing.T) {
	c := etcdtest.Start(t, 1)
	n := 0
	storetest.Run(t, func(t *testing.T) vault.Store {
		n++
		return openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "conformance/" + strings.Repeat("x", n) + "/"})
	})
}

// The conformance suite again, with Scan reading in pages as it does
// against a server older than 3.7 (which cannot stream a range).
func TestStore_Conformance_Paged(t *testing.T) {
	c := etcdtest.Start(t, 1)
	n := 0
	storetest.Run(t, func(t *testing.T) vault.Store {
		n++
		st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "paged/" + strings.Repeat("x", n) + "/"})
		st.PageScans()
		return st
	})
}

// Scan streams or pages a range of several pages alike: every key once, in
// order, after the cursor, and stops when told.
func TestStore_ScanLargeRange(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	const n = 1300 // more than two pages of scanPage
	var want []string
	for i := range n {
		want = append(want, fmt.Sprintf("conn/%05d", i))
	}
	streamed := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "big/"})
	for i := 0; i < n; i += 100 {
		var ops []vault.Op
		for _, k := range want[i:min(i+100, n)] {
			ops = append(ops, vault.Op{Key: k, Value: []byte("v-" + k), IfRev: vault.AnyRev})
		}
		if _, err := streamed.Apply(ctx, ops...); err != nil {
			t.Fatal(err)
		}
	}
	paged := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "big/"})
	paged.PageScans()
	for name, st := range map[string]*etcd.Store{"streamed": streamed, "paged": paged} {
		var got []string
		err := st.Scan(ctx, "conn/", "conn/00099", func(k string, v []byte, _ uint64) (bool, error) {
			if string(v) != "v-"+k {
				t.Fatalf("%s: %s holds %q", name, k, v)
			}
			got = append(got, k)
			return true, nil
		})
		if err != nil || !slices.Equal(got, want[100:]) {
			t.Errorf("%s: Scan after conn/00099 = %d keys (first %v), %v; want %d from conn/00100", name, len(got), got[:min(1, len(got))], err, n-100)
		}
		stop := 0
		err = st.Scan(ctx, "conn/", "", func(string, []byte, uint64) (bool, error) {
			stop++
			return stop < 700, nil
		})
		if err != nil || stop != 700 {
			t.Errorf("%s: Scan told to stop at 700 saw %d, %v", name, stop, err)
		}
	}
}

// Two stores on one cluster with different prefixes do not see each
// other's keys, and nothing lands outside the prefix.
func TestStore_Prefix(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	a := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "apps/a/"})
	b := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "apps/b/"})
	if _, err := a.Apply(ctx, vault.Op{Key: "conn/1", Value: []byte("sealed-a"), IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Get(ctx, "conn/1"); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("b.Get(conn/1) = %v; want ErrNotFound (a's key)", err)
	}
	var keys []string
	if err := b.Scan(ctx, "", "", func(k string, _ []byte, _ uint64) (bool, error) {
		keys = append(keys, k)
		return true, nil
	}); err != nil || len(keys) != 0 {
		t.Errorf("b.Scan(all) = %q, %v; want nothing", keys, err)
	}
	resp, err := c.Client(t).Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if !bytes.HasPrefix(kv.Key, []byte("apps/a/")) {
			t.Errorf("key %q written outside the prefix", kv.Key)
		}
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "apps/a/conn/1" {
		t.Errorf("cluster holds %d keys; want exactly apps/a/conn/1", len(resp.Kvs))
	}
}

// A write beyond the request size limit fails with ErrTooLarge and writes
// nothing, whether the store refuses it (its limit known) or the cluster
// does (the store told a larger limit than the cluster's).
func TestStore_Apply_TooLarge(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	big := make([]byte, 2*etcd.DefaultMaxRequestBytes)
	for _, tt := range []struct {
		name  string
		limit int
	}{
		{"refused before sending", 0},
		{"refused by the cluster", 8 * etcd.DefaultMaxRequestBytes},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A generous request timeout: 1.5 MB through -race on a busy
			// machine takes seconds.
			st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "big/" + tt.name + "/", MaxRequestBytes: tt.limit, RequestTimeout: time.Minute})
			ops := []vault.Op{
				{Key: "small", Value: []byte("fits"), IfRev: vault.AnyRev},
				{Key: "conn/big", Value: big, IfRev: vault.AnyRev},
			}
			_, err := st.Apply(ctx, ops...)
			if !errors.Is(err, etcd.ErrTooLarge) {
				t.Fatalf("Apply(%d bytes) = %v; want ErrTooLarge", len(big), err)
			}
			for _, k := range []string{"small", "conn/big"} {
				if _, _, err := st.Get(ctx, k); !errors.Is(err, vault.ErrNotFound) {
					t.Errorf("Get(%q) after the refused Apply = %v; want ErrNotFound", k, err)
				}
			}
			// Just under the limit still goes through.
			fit := etcd.DefaultMaxRequestBytes - 4096
			if _, err := st.Apply(ctx, vault.Op{Key: "conn/fits", Value: big[:fit], IfRev: vault.AnyRev}); err != nil {
				t.Errorf("Apply(%d bytes) = %v; want nil", fit, err)
			}
		})
	}
}

// Open fails fast, naming the endpoints, when nothing answers.
func TestOpen_Unreachable(t *testing.T) {
	dead := "http://127.0.0.1:1" // nothing listens on port 1
	start := time.Now()
	st, err := etcd.Open(context.Background(), etcd.Options{Endpoints: []string{dead}, DialTimeout: 500 * time.Millisecond})
	if err == nil {
		st.Close()
		t.Fatalf("Open(%s) = nil; want an error", dead)
	}
	if !errors.Is(err, etcd.ErrUnreachable) || !strings.Contains(err.Error(), dead) {
		t.Errorf("Open(%s) = %v; want ErrUnreachable naming the endpoint", dead, err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Open(%s) took %v; want about the dial timeout", dead, took)
	}
}

// The request timeout bounds a request to a cluster that stopped
// answering (its only member is gone).
func TestStore_RequestTimeout(t *testing.T) {
	c := etcdtest.Start(t, 1)
	st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "timeout/", RequestTimeout: 300 * time.Millisecond})
	c.Stop(0)
	start := time.Now()
	_, _, err := st.Get(context.Background(), "k")
	if err == nil || errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("Get with the cluster down = %v; want an error", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("Get with the cluster down took %v; want about the request timeout", took)
	}
}
