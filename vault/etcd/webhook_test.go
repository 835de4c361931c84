package etcd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// receiver is one webhook endpoint that records the sequence of each
// delivery and any two deliveries that overlapped.
type receiver struct {
	inflight    atomic.Int32
	overlapping atomic.Int32
	mu          sync.Mutex
	seqs        []uint64
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rc.inflight.Add(1) > 1 {
		rc.overlapping.Add(1)
	}
	defer rc.inflight.Add(-1)
	var body struct {
		Data struct {
			Sequence uint64 `json:"sequence"`
		} `json:"data"`
	}
	b, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(b, &body); err != nil {
		http.Error(w, "bad body", http.StatusBadRequest)
		return
	}
	time.Sleep(20 * time.Millisecond) // a window for another replica to overlap
	rc.mu.Lock()
	rc.seqs = append(rc.seqs, body.Data.Sequence)
	rc.mu.Unlock()
}

func (rc *receiver) received() []uint64 {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.seqs)
}

// Three replicas deliver one endpoint's events: one replica at a time
// (the receiver never sees two deliveries at once), every event at least
// once and in order (no event before all the earlier ones). The
// delivering replica dies mid-stream (its client goes without a word);
// another takes the endpoint once its lease runs out and goes on from the
// cursor it left in etcd.
func TestReplicas_WebhooksOneDelivererAtATime(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a lease to run out")
	}
	c := etcdtest.Start(t, 1)
	clk := &testClock{real: true}
	p := &rotatingProvider{lifetime: time.Hour, now: time.Now, live: map[string]bool{}}
	const ttl = 6 * time.Second
	rs := startReplicas(t, c, 3, p, clk, etcd.Options{LockTTL: ttl}, vault.Config{})
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	secret, err := webhook.ParseSecret("whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA==")
	if err != nil {
		t.Fatal(err)
	}
	var hooks []*webhook.Deliverer
	stops := make([]context.CancelFunc, 3)
	for i, r := range rs {
		h, err := webhook.New(t.Context(), r.v, r.st, webhook.Config{
			Endpoints:   []webhook.Endpoint{{Name: "app", URL: srv.URL, Secrets: []webhook.Secret{secret}, AllowPrivate: true}},
			Timeout:     2 * time.Second,
			BaseBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); h.Run(ctx) }()
		stops[i] = cancel
		t.Cleanup(func() { cancel(); <-done })
		hooks = append(hooks, h)
	}
	delivering := func() []int {
		var out []int
		for i, h := range hooks {
			if h.Stats()[0].Delivering {
				out = append(out, i)
			}
		}
		return out
	}
	waitFor(t, "one replica to deliver", func() bool { return len(delivering()) == 1 })

	const m = 40
	first, _ := rs[0].v.LastEventSequence()
	for i := range m / 2 {
		connectOn(t, rs[i%3], rs, fmt.Sprint("user", i))
	}
	waitFor(t, "some deliveries", func() bool { return len(rc.received()) >= 5 })
	d := delivering()
	if len(d) != 1 {
		t.Fatalf("replicas delivering: %v; want one", d)
	}
	dead := d[0]
	rs[dead].st.Close() // dies: its lease runs out on its own
	killed := time.Now()
	var alive []*replica
	for i, r := range rs {
		if i != dead {
			alive = append(alive, r)
		}
	}
	for i := range m / 2 {
		connectOn(t, alive[i%2], alive, fmt.Sprint("user", m/2+i))
	}
	last := first + m
	var got []uint64
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if got = rc.received(); len(got) > 0 && slices.Max(got) >= last {
			break
		}
	}
	took := time.Since(killed)
	stops[dead]()
	if n := rc.overlapping.Load(); n != 0 {
		t.Errorf("%d deliveries overlapped another; want none (one replica at a time)", n)
	}
	seen := map[uint64]bool{}
	dups := 0
	for k, s := range got {
		if seen[s] {
			dups++
			continue
		}
		for want := first + 1; want < s; want++ {
			if !seen[want] {
				t.Fatalf("event %d delivered (%d-th request) before event %d; want in order. received: %v", s, k, want, got)
			}
		}
		seen[s] = true
	}
	for s := first + 1; s <= last; s++ {
		if !seen[s] {
			t.Errorf("event %d never delivered; received: %v", s, got)
			break
		}
	}
	t.Logf("%d events, %d requests (%d delivered again after the takeover); all delivered %v after the death (lock TTL %v)",
		m, len(got), dups, took.Round(100*time.Millisecond), ttl)
}
