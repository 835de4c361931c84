package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// Two replicas ask for one lock: the second waits until the first lets go,
// and the first's hold is then over.
func TestLock_Exclusive(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/"})
	b := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/"})
	la, err := a.Lock(ctx, "conn/1")
	if err != nil {
		t.Fatal(err)
	}
	if err := la.Check(ctx, time.Second); err != nil {
		t.Fatalf("Check of a held lock = %v; want nil", err)
	}
	got := make(chan *etcd.Lock, 1)
	go func() {
		lb, err := b.Lock(ctx, "conn/1")
		if err != nil {
			t.Error(err)
		}
		got <- lb
	}()
	select {
	case <-got:
		t.Fatal("second Lock returned while the first was held")
	case <-time.After(500 * time.Millisecond):
	}
	la.Release()
	var lb *etcd.Lock
	select {
	case lb = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("second Lock still waiting 10s after the first was released")
	}
	defer lb.Release()
	if err := la.Check(ctx, 0); !errors.Is(err, etcd.ErrLockLost) {
		t.Errorf("Check after Release = %v; want ErrLockLost", err)
	}
	if err := lb.Check(ctx, time.Second); err != nil {
		t.Errorf("Check of the new holder = %v; want nil", err)
	}
	if lb.Key() == la.Key() || lb.Rev() <= la.Rev() {
		t.Errorf("new holding %s@%d; want a key and revision of its own after %s@%d", lb.Key(), lb.Rev(), la.Key(), la.Rev())
	}
	// Other names are not held up.
	lo, err := a.Lock(ctx, "conn/2")
	if err != nil {
		t.Fatal(err)
	}
	lo.Release()
}

// A holder that dies without releasing (its client closed: no more
// keepalives) loses the lock within the lock TTL.
func TestLock_HolderDies(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := etcd.Open(ctx, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/", LockTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/"})
	if _, err := a.Lock(ctx, "conn/1"); err != nil {
		t.Fatal(err)
	}
	a.Close()
	start := time.Now()
	lb, err := b.Lock(ctx, "conn/1")
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Release()
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("lock of a dead holder taken after %v; want about its 2s TTL", took)
	}
}

// Check refuses a call that would outlast the lease.
func TestLock_Check_LeaseMargin(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx := t.Context()
	st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/", LockTTL: 3 * time.Second})
	l, err := st.Lock(ctx, "conn/1")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	if err := l.Check(ctx, time.Second); err != nil {
		t.Errorf("Check(1s) with a 3s lease = %v; want nil", err)
	}
	if err := l.Check(ctx, 10*time.Second); !errors.Is(err, etcd.ErrLockLost) {
		t.Errorf("Check(10s) with a 3s lease = %v; want ErrLockLost", err)
	}
}

// Watch reports every change after the revision it starts from, one call
// per transaction, in order; history compacted away is ErrCompacted.
func TestWatch(t *testing.T) {
	c := etcdtest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "app/"})
	put := func(ops ...vault.Op) uint64 {
		t.Helper()
		revs, err := st.Apply(ctx, ops...)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Max(revs)
	}
	p := func(k, v string) vault.Op { return vault.Op{Key: k, Value: []byte(v), IfRev: vault.AnyRev} }
	put(p("conn/0", "before"))
	from, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	put(p("conn/1", "one"))
	put(p("conn/2", "two"), p("conn/3", "three"))
	put(p("other/x", "not watched"))
	put(vault.Op{Key: "conn/1", Delete: true, IfRev: vault.AnyRev})
	last := put(p("conn/2", "two again"))

	var got []string
	wctx, stop := context.WithCancel(ctx)
	err = st.Watch(wctx, "conn/", from, func(cs []etcd.Change) error {
		var s []string
		for _, c := range cs {
			if c.Deleted {
				s = append(s, "-"+c.Key)
			} else {
				s = append(s, c.Key+"="+string(c.Value))
			}
		}
		got = append(got, fmt.Sprint(s))
		if cs[len(cs)-1].Rev == last {
			stop()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch = %v; want context.Canceled after the last change", err)
	}
	want := []string{"[conn/1=one]", "[conn/2=two conn/3=three]", "[-conn/1]", "[conn/2=two again]"}
	if !slices.Equal(got, want) {
		t.Errorf("Watch saw %q; want %q", got, want)
	}

	c.Compact(t)
	err = st.Watch(ctx, "conn/", from, func([]etcd.Change) error { return nil })
	if !errors.Is(err, etcd.ErrCompacted) {
		t.Errorf("Watch from a compacted revision = %v; want ErrCompacted", err)
	}
}
