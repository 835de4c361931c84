package vault_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// failingStore is a real bbolt Store whose next Apply, when armed, carries
// one more op, last, that fails inside the transaction (a key longer than
// bbolt allows) after the others were put: bbolt rolls the whole
// transaction back, so whatever came in the same Apply is not written.
type failingStore struct {
	*bolt.Store
	armed atomic.Bool
}

func (s *failingStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	if s.armed.CompareAndSwap(true, false) {
		ops = append(slices.Clone(ops), vault.Op{Key: strings.Repeat("k", 40000), Value: []byte("x"), IfRev: vault.AnyRev})
	}
	return s.Store.Apply(ctx, ops...)
}

// scopedProvider is the fake provider whose refreshes grant the scopes set
// last (nil: the same as before), and whose exchanges grant exchScopes
// (nil: the fake's).
type scopedProvider struct {
	*fakeProvider
	mu         sync.Mutex
	scopes     []string
	exchScopes []string
}

func (p *scopedProvider) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	g, err := p.fakeProvider.Exchange(ctx, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exchScopes != nil {
		g.Scopes = p.exchScopes
	}
	return g, err
}

func (p *scopedProvider) setScopes(s ...string) {
	p.mu.Lock()
	p.scopes = s
	p.mu.Unlock()
}

func (p *scopedProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	g, err := p.fakeProvider.Refresh(ctx, g, cred)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.scopes != nil {
		g.Scopes = p.scopes
	}
	return g, err
}

type eventsHarness struct {
	t     testing.TB
	clock *clock
	p     *scopedProvider
	path  string
	mk    seal.MasterKey
	store *failingStore
	v     *vault.Vault
	// armAfterStart arms the store's failure for the callback of the next
	// connect.
	armAfterStart bool
}

func newEventsHarness(t testing.TB) *eventsHarness {
	t.Helper()
	h := &eventsHarness{t: t, clock: newClock(), path: filepath.Join(t.TempDir(), "ev.db")}
	h.p = &scopedProvider{fakeProvider: &fakeProvider{clock: h.clock, lifetime: time.Hour}}
	var err error
	if h.mk, err = seal.GenerateMasterKey(); err != nil {
		t.Fatal(err)
	}
	h.open()
	t.Cleanup(func() { h.store.Close() })
	return h
}

func (h *eventsHarness) open() {
	h.t.Helper()
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	h.store = &failingStore{Store: st}
	kr, err := vault.OpenKeyring(context.Background(), h.store, h.mk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.v, err = vault.Open(context.Background(), vault.Config{
		Store: h.store, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}, Now: h.clock.Now,
	})
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *eventsHarness) reopen() {
	h.t.Helper()
	h.store.Close()
	h.open()
}

// connect runs a connect flow for owner and returns the connection.
func (h *eventsHarness) connect(owner string) (*vault.Connection, error) {
	h.t.Helper()
	u, _, err := h.v.StartConnect(context.Background(), vault.ConnectRequest{Binding: "b", Owner: owner, Provider: "fake", Scopes: []string{"read"}})
	if err != nil {
		h.t.Fatalf("StartConnect = %v", err)
	}
	if h.armAfterStart {
		h.armAfterStart = false
		h.store.armed.Store(true)
	}
	pu, _ := url.Parse(u)
	res, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: pu.Query().Get("state"), Code: "code"})
	if err != nil {
		return nil, err
	}
	return res.Connection, nil
}

func (h *eventsHarness) mustConnect(owner string) *vault.Connection {
	h.t.Helper()
	c, err := h.connect(owner)
	if err != nil {
		h.t.Fatalf("CompleteConnect = %v", err)
	}
	return c
}

func (h *eventsHarness) events(after uint64) []vault.Event {
	h.t.Helper()
	evs, err := h.v.Events(context.Background(), after, 0)
	if err != nil {
		h.t.Fatalf("Events(%d) = %v", after, err)
	}
	return evs
}

// forceRefresh refreshes connection id at the provider now.
func (h *eventsHarness) forceRefresh(id string) error {
	_, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: id, Force: true})
	return err
}

func TestEvents_EachChangeEmitsOneEvent(t *testing.T) {
	h := newEventsHarness(t)
	ctx := context.Background()
	var id string
	for _, tc := range []struct {
		name       string
		change     func() error
		wantType   string // "": no event
		wantReason string
	}{
		{"connect", func() error { c, err := h.connect("alice"); id = c.ID; return err }, vault.EventCreated, ""},
		{"refresh, same scopes", func() error { h.clock.Add(3 * time.Second); return h.forceRefresh(id) }, "", ""},
		{"token read", func() error { _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: id}); return err }, "", ""},
		{"refresh, new scopes", func() error {
			h.clock.Add(3 * time.Second)
			h.p.setScopes("read", "write")
			return h.forceRefresh(id)
		}, vault.EventScopesChanged, ""},
		{"transient failure", func() error {
			h.clock.Add(3 * time.Second)
			h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrUnavailable, Code: "temporarily_unavailable"})
			_ = h.forceRefresh(id)
			return nil
		}, "", ""},
		{"grant rejected", func() error {
			h.clock.Add(time.Hour)
			h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
			if err := h.forceRefresh(id); !errors.Is(err, vault.ErrReauthRequired) {
				return fmt.Errorf("refresh = %v; want ErrReauthRequired", err)
			}
			return nil
		}, vault.EventNeedsReauth, "invalid_grant"},
		{"reconnect", func() error {
			h.p.setRefreshErr(nil)
			h.p.exchScopes = []string{"read", "write"} // as granted last
			c, err := h.connect("alice")
			if err == nil && c.ID != id {
				return fmt.Errorf("reconnect made %s; want %s", c.ID, id)
			}
			return err
		}, vault.EventReconnected, ""},
		{"revoke", func() error { _, err := h.v.Revoke(ctx, id, "user_left"); return err }, vault.EventRevoked, "user_left"},
		{"revoke again", func() error { _, err := h.v.Revoke(ctx, id, "again"); return err }, "", ""},
	} {
		before, _ := h.v.LastEventSequence()
		if err := tc.change(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		evs := h.events(before)
		if tc.wantType == "" {
			if len(evs) != 0 {
				t.Errorf("%s: emitted %d events (%s); want none", tc.name, len(evs), evs[0].Type)
			}
			continue
		}
		if len(evs) != 1 {
			t.Fatalf("%s: emitted %d events; want 1 %s", tc.name, len(evs), tc.wantType)
		}
		ev := evs[0]
		if ev.Type != tc.wantType || ev.Reason != tc.wantReason || ev.Sequence != before+1 {
			t.Errorf("%s: event %s/%q seq %d; want %s/%q seq %d", tc.name, ev.Type, ev.Reason, ev.Sequence, tc.wantType, tc.wantReason, before+1)
		}
		c, _ := h.v.Get(ctx, id)
		if ev.Connection.ID != id || ev.ConnectionSequence != c.EventSeq || ev.Connection.Generation != c.Generation {
			t.Errorf("%s: event of %s conn_seq %d gen %d; want %s conn_seq %d gen %d", tc.name,
				ev.Connection.ID, ev.ConnectionSequence, ev.Connection.Generation, id, c.EventSeq, c.Generation)
		}
	}
	// Per-connection sequences count 1, 2, 3, ... with no gap.
	for i, ev := range h.events(0) {
		if ev.ConnectionSequence != uint64(i+1) || ev.Sequence != uint64(i+1) {
			t.Errorf("event %d (%s): seq %d conn_seq %d; want %d, %d", i, ev.Type, ev.Sequence, ev.ConnectionSequence, i+1, i+1)
		}
	}
}

func TestEvents_ReconnectWithNewScopes_TwoEvents(t *testing.T) {
	h := newEventsHarness(t)
	c := h.mustConnect("alice")
	h.p.exchScopes = []string{"admin", "read"}
	h.mustConnect("alice")
	var got []string
	for _, ev := range h.events(0) {
		got = append(got, fmt.Sprintf("%s/%d/%d", ev.Type, ev.Sequence, ev.ConnectionSequence))
		if ev.Connection.ID != c.ID {
			t.Errorf("event %s of %s; want %s", ev.Type, ev.Connection.ID, c.ID)
		}
	}
	want := []string{"connection.created/1/1", "connection.reconnected/2/2", "connection.scopes_changed/3/3"}
	if !slices.Equal(got, want) {
		t.Errorf("events = %v; want %v", got, want)
	}
}

func TestEvents_PerConnectionSequence(t *testing.T) {
	h := newEventsHarness(t)
	ctx := context.Background()
	a := h.mustConnect("alice")
	b := h.mustConnect("bob")
	if _, err := h.v.Revoke(ctx, a.ID, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := h.v.Revoke(ctx, b.ID, ""); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range h.events(0) {
		got = append(got, fmt.Sprintf("%d:%s#%d", ev.Sequence, ev.Connection.Owner, ev.ConnectionSequence))
	}
	want := []string{"1:alice#1", "2:bob#1", "3:alice#2", "4:bob#2"}
	if !slices.Equal(got, want) {
		t.Errorf("events = %v; want %v", got, want)
	}
}

func TestEvents_FailedWrite_LeavesNeitherChangeNorEvent(t *testing.T) {
	h := newEventsHarness(t)
	ctx := context.Background()
	c := h.mustConnect("alice")

	h.store.armed.Store(true)
	if _, err := h.v.Revoke(ctx, c.ID, "x"); err == nil {
		t.Fatal("Revoke with a failing write = nil; want an error")
	}
	if got := h.events(1); len(got) != 0 {
		t.Errorf("a failed write left %d events (%s)", len(got), got[0].Type)
	}
	if last, _ := h.v.LastEventSequence(); last != 1 {
		t.Errorf("LastEventSequence = %d; want 1 (a failed write uses no sequence)", last)
	}
	h.reopen()
	got, _ := h.v.Get(ctx, c.ID)
	if got.Status != vault.StatusActive {
		t.Errorf("after a failed revoke the stored status is %s; want active", got.Status)
	}
	if len(h.events(1)) != 0 {
		t.Errorf("a failed write left an event on disk")
	}

	// A failed first write of a new connection: no record, no event.
	h.armAfterStart = true
	if _, err := h.connect("bob"); err == nil {
		t.Fatal("connect with a failing write = nil; want an error")
	}
	if n := h.v.Len(); n != 1 {
		t.Errorf("Len = %d; want 1", n)
	}
	// The next change takes the next sequence, no gap.
	if _, err := h.v.Revoke(ctx, c.ID, "x"); err != nil {
		t.Fatal(err)
	}
	evs := h.events(0)
	if len(evs) != 2 || evs[1].Sequence != 2 || evs[1].Type != vault.EventRevoked || evs[1].ConnectionSequence != 2 {
		t.Errorf("events = %+v; want created 1, revoked 2", evs)
	}
}

func TestEvents_SequenceContinuesAfterReopenAndSweep(t *testing.T) {
	h := newEventsHarness(t)
	ctx := context.Background()
	for _, o := range []string{"a", "b", "c"} {
		h.mustConnect(o)
	}
	h.clock.Add(48 * time.Hour)
	// Everything is old enough, but the newest event stays.
	n, err := h.v.SweepEvents(ctx, h.clock.Now(), ^uint64(0))
	if err != nil || n != 2 {
		t.Fatalf("SweepEvents = %d, %v; want 2", n, err)
	}
	h.reopen()
	if last, _ := h.v.LastEventSequence(); last != 3 {
		t.Fatalf("after reopen LastEventSequence = %d; want 3", last)
	}
	d := h.mustConnect("d")
	evs := h.events(0)
	if len(evs) != 2 || evs[0].Sequence != 3 || evs[1].Sequence != 4 || evs[1].Connection.ID != d.ID {
		t.Errorf("events after reopen = %v; want sequences 3, 4", evs)
	}
}

func TestVault_SweepEvents(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		age      time.Duration // how far the clock moves after the 5 events
		before   time.Duration // sweep events written before now-before
		upTo     uint64
		wantLeft []uint64
	}{
		{"none old enough", time.Hour, 2 * time.Hour, ^uint64(0), []uint64{1, 2, 3, 4, 5}},
		{"all old: newest kept", 3 * time.Hour, 2 * time.Hour, ^uint64(0), []uint64{5}},
		{"held by a cursor", 3 * time.Hour, 2 * time.Hour, 2, []uint64{3, 4, 5}},
		{"cursor at zero", 3 * time.Hour, 2 * time.Hour, 0, []uint64{1, 2, 3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newEventsHarness(t)
			for i := range 5 {
				h.mustConnect(fmt.Sprint("owner", i))
			}
			h.clock.Add(tc.age)
			if _, err := h.v.SweepEvents(ctx, h.clock.Now().Add(-tc.before), tc.upTo); err != nil {
				t.Fatal(err)
			}
			var left []uint64
			for _, ev := range h.events(0) {
				left = append(left, ev.Sequence)
			}
			if !slices.Equal(left, tc.wantLeft) {
				t.Errorf("left %v; want %v", left, tc.wantLeft)
			}
		})
	}
}

func TestEvents_NoTokenMaterial(t *testing.T) {
	h := newEventsHarness(t)
	c := h.mustConnect("alice")
	h.clock.Add(3 * time.Second)
	h.p.setScopes("read", "write")
	if err := h.forceRefresh(c.ID); err != nil {
		t.Fatal(err)
	}
	evs := h.events(0)
	if len(evs) != 2 {
		t.Fatalf("%d events; want 2", len(evs))
	}
	for _, ev := range evs {
		b, _ := json.Marshal(ev)
		for _, secret := range []string{"at-1", "rt-1", "at-2", "rt-2"} {
			if strings.Contains(string(b), `"`+secret+`"`) {
				t.Errorf("event %s holds token %s: %s", ev.Type, secret, b)
			}
		}
		if len(ev.Connection.Transitions) != 0 || ev.Connection.InFlight != nil {
			t.Errorf("event %s carries bookkeeping: %s", ev.Type, b)
		}
	}
}

func TestEvents_RotateKeys_EventsStillOpen(t *testing.T) {
	h := newEventsHarness(t)
	h.mustConnect("alice")
	term, n, err := h.v.RotateKeys(context.Background())
	if err != nil || n < 2 {
		t.Fatalf("RotateKeys = %d, %d, %v; want the connection and its event re-sealed", term, n, err)
	}
	h.reopen()
	if evs := h.events(0); len(evs) != 1 || evs[0].Type != vault.EventCreated {
		t.Errorf("events after rotation = %v", evs)
	}
}

func TestSubscription_ReplayThenLive(t *testing.T) {
	h := newEventsHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, o := range []string{"a", "b", "c"} {
		h.mustConnect(o)
	}
	sub := h.v.Subscribe(1, 16)
	defer sub.Close()
	next := func() uint64 {
		t.Helper()
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("Next = %v", err)
		}
		return ev.Sequence
	}
	// Replay of 2 and 3, then live 4 and 5.
	if got := []uint64{next(), next()}; !slices.Equal(got, []uint64{2, 3}) {
		t.Errorf("replayed %v; want [2 3]", got)
	}
	go func() {
		h.mustConnect("d")
		h.mustConnect("e")
	}()
	if got := []uint64{next(), next()}; !slices.Equal(got, []uint64{4, 5}) {
		t.Errorf("live %v; want [4 5]", got)
	}
	if sub.Cursor() != 5 {
		t.Errorf("Cursor = %d; want 5", sub.Cursor())
	}
	sub.Close()
	if _, err := sub.Next(ctx); !errors.Is(err, vault.ErrSubscriptionClosed) {
		t.Errorf("Next after Close = %v; want ErrSubscriptionClosed", err)
	}
}

func TestSubscription_SlowSubscriberCutOff(t *testing.T) {
	h := newEventsHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub := h.v.Subscribe(0, 2)
	defer sub.Close()
	for i := range 4 {
		h.mustConnect(fmt.Sprint("owner", i))
	}
	var got []uint64
	var err error
	for range 10 {
		var ev vault.Event
		if ev, err = sub.Next(ctx); err != nil {
			break
		}
		got = append(got, ev.Sequence)
	}
	if !errors.Is(err, vault.ErrSlowSubscriber) {
		t.Fatalf("Next = %v; want ErrSlowSubscriber", err)
	}
	if !slices.Equal(got, []uint64{1, 2}) || sub.Cursor() != 2 {
		t.Errorf("got %v (cursor %d) before the cut-off; want [1 2] (cursor 2)", got, sub.Cursor())
	}
	// Resuming from the cursor misses nothing.
	again := h.v.Subscribe(sub.Cursor(), 2)
	defer again.Close()
	got = nil
	for range 2 {
		ev, err := again.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Sequence)
	}
	if !slices.Equal(got, []uint64{3, 4}) {
		t.Errorf("resumed with %v; want [3 4]", got)
	}
}

func TestSubscription_NextHonoursContext(t *testing.T) {
	h := newEventsHarness(t)
	sub := h.v.Subscribe(0, 0)
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Next = %v; want DeadlineExceeded", err)
	}
}

// Concurrent changes of different connections get distinct, gapless
// sequences, and a subscriber sees them in order.
func TestEvents_ConcurrentChanges_GaplessInOrder(t *testing.T) {
	h := newEventsHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 40
	sub := h.v.Subscribe(0, n)
	defer sub.Close()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { h.mustConnect(fmt.Sprint("owner", i)) })
	}
	wg.Wait()
	for i := range n {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Sequence != uint64(i+1) {
			t.Fatalf("event %d has sequence %d", i, ev.Sequence)
		}
	}
}

// BenchmarkVault_Events reads a page of 256 events, as a WatchEvents replay
// or a webhook worker does: one Scan, then open and decode each.
func BenchmarkVault_Events(b *testing.B) {
	h := newEventsHarness(b)
	for i := range 256 {
		h.mustConnect(fmt.Sprint("owner", i))
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		evs, err := h.v.Events(ctx, 0, 256)
		if err != nil || len(evs) != 256 {
			b.Fatalf("Events = %d, %v", len(evs), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*256), "ns/event")
}
