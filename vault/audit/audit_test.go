package audit_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// countingStore counts Apply calls and can hold them until released.
type countingStore struct {
	vault.Store
	applies atomic.Int32
	mu      sync.Mutex
	hold    chan struct{} // if set, Apply waits for it to close
}

func (s *countingStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	s.applies.Add(1)
	s.mu.Lock()
	hold := s.hold
	s.mu.Unlock()
	if hold != nil {
		<-hold
	}
	return s.Store.Apply(ctx, ops...)
}

func openAuditStore(t *testing.T) *countingStore {
	t.Helper()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "a.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &countingStore{Store: st}
}

func TestLog_List_NewestFirstFilteredAndPaged(t *testing.T) {
	st := openAuditStore(t)
	clk := newClock()
	a := audit.New(audit.Config{Store: st, Now: clk.Now})
	defer a.Close()
	for i := range 6 {
		conn := "conn_a"
		if i%2 == 1 {
			conn = "conn_b"
		}
		a.Record(audit.Record{Caller: "app", Method: fmt.Sprintf("/m/%d", i), ConnectionID: conn, Outcome: "OK"})
		clk.Add(time.Second)
		if i%2 == 1 {
			a.Flush(context.Background()) // three chunks of two
		}
	}
	ctx := context.Background()
	all, next, err := a.List(ctx, audit.Filter{}, "", 100)
	if err != nil || next != "" || len(all) != 6 {
		t.Fatalf("List = %d records, next %q, %v; want 6, \"\", nil", len(all), next, err)
	}
	for i, r := range all {
		if want := fmt.Sprintf("/m/%d", 5-i); r.Method != want || r.ID == "" {
			t.Errorf("record %d = %s (id %q); want %s, newest first", i, r.Method, r.ID, want)
		}
	}
	// Filter and page: conn_b has /m/5, /m/3, /m/1.
	var got []string
	after := ""
	for range 10 {
		page, next, err := a.List(ctx, audit.Filter{ConnectionID: "conn_b"}, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.Method)
		}
		if next == "" {
			break
		}
		after = next
	}
	if fmt.Sprint(got) != "[/m/5 /m/3 /m/1]" {
		t.Errorf("conn_b pages = %v; want [/m/5 /m/3 /m/1]", got)
	}
}

func TestLog_Batched_OneApplyForManyRecords(t *testing.T) {
	st := openAuditStore(t)
	a := audit.New(audit.Config{Store: st, FlushEvery: time.Hour, FlushRecords: 10_000})
	defer a.Close()
	const n = 1000
	for range n {
		a.Record(audit.Record{Caller: "app", Method: "/m", Outcome: "OK"})
	}
	if err := a.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := st.applies.Load(); got != 1 {
		t.Errorf("%d records took %d Store.Apply calls; want 1", n, got)
	}
	if a.Written() != n || a.Dropped() != 0 || a.Backlog() != 0 {
		t.Errorf("written %d, dropped %d, backlog %d; want %d, 0, 0", a.Written(), a.Dropped(), a.Backlog(), n)
	}
}

func TestLog_FullBuffer_DropsAreCounted(t *testing.T) {
	st := openAuditStore(t)
	hold := make(chan struct{})
	st.hold = hold
	a := audit.New(audit.Config{Store: st, Buffer: 4, FlushRecords: 1, BlockFor: time.Millisecond})
	const n = 50
	for range n {
		a.Record(audit.Record{Method: "/m", Outcome: "OK"})
	}
	if a.Dropped() == 0 {
		t.Error("the flusher is stuck and the buffer holds 4, yet nothing was counted as dropped")
	}
	st.mu.Lock()
	st.hold = nil
	st.mu.Unlock()
	close(hold)
	a.Close()
	if got := a.Written() + a.Dropped(); got != n {
		t.Errorf("written %d + dropped %d = %d; want every one of %d accounted for", a.Written(), a.Dropped(), got, n)
	}
	a.Record(audit.Record{Method: "/after-close"})
	if got := a.Written() + a.Dropped(); got != n+1 {
		t.Errorf("a record after Close was not counted: %d; want %d", got, n+1)
	}
}

func TestLog_Close_FlushesQueued(t *testing.T) {
	st := openAuditStore(t)
	a := audit.New(audit.Config{Store: st, FlushEvery: time.Hour})
	for range 3 {
		a.Record(audit.Record{Method: "/m", Outcome: "OK"})
	}
	a.Close()
	a.Close() // idempotent
	recs, _, err := a.List(context.Background(), audit.Filter{}, "", 10)
	if err != nil || len(recs) != 3 {
		t.Errorf("after Close: %d records, %v; want 3", len(recs), err)
	}
}

func TestLog_Sweep_DeletesOnlyExpired(t *testing.T) {
	st := openAuditStore(t)
	clk := newClock()
	a := audit.New(audit.Config{Store: st, Now: clk.Now, Retention: time.Hour})
	defer a.Close()
	ctx := context.Background()
	for range 2500 {
		a.Record(audit.Record{Method: "/old", Outcome: "OK"})
	}
	a.Flush(ctx)
	clk.Add(2 * time.Hour)
	a.Record(audit.Record{Method: "/new", Outcome: "OK"})
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := a.Sweep(ctx)
	if err != nil || n != 2500 {
		t.Fatalf("Sweep = %d, %v; want 2500, nil", n, err)
	}
	recs, _, _ := a.List(ctx, audit.Filter{}, "", 10)
	if len(recs) != 1 || recs[0].Method != "/new" {
		t.Errorf("left after sweep: %+v; want just /new", recs)
	}
}

func TestLog_ConcurrentRecords_AllWritten(t *testing.T) {
	st := openAuditStore(t)
	a := audit.New(audit.Config{Store: st, FlushEvery: 5 * time.Millisecond, FlushRecords: 64})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				a.Record(audit.Record{Caller: fmt.Sprint(g), Method: fmt.Sprint(i), Outcome: "OK"})
			}
		}()
	}
	wg.Wait()
	a.Close()
	recs, _, err := a.List(context.Background(), audit.Filter{}, "", 2000)
	if err != nil || len(recs) != 1600 || a.Dropped() != 0 {
		t.Errorf("List = %d records, %v, dropped %d; want 1600, none dropped", len(recs), err, a.Dropped())
	}
}

func TestLog_List_SkipsDamagedChunks(t *testing.T) {
	st := openAuditStore(t)
	a := audit.New(audit.Config{Store: st})
	defer a.Close()
	a.Record(audit.Record{Method: "/m", Outcome: "OK"})
	a.Flush(context.Background())
	for i, junk := range [][]byte{nil, {1}, {1, 200}, {1, 1, 0xff}, {9, 1, 2, 3}, {1, 1, 2, 5, 'a'}} {
		key := fmt.Sprintf("audit/ffffffffffffffff00000000%08x", i)
		if _, err := st.Apply(context.Background(), vault.Op{Key: key, Value: junk, IfRev: vault.AnyRev}); err != nil {
			t.Fatal(err)
		}
	}
	recs, _, err := a.List(context.Background(), audit.Filter{}, "", 10)
	if err != nil || len(recs) != 1 {
		t.Errorf("List with damaged chunks = %d records, %v; want the 1 good one", len(recs), err)
	}
	if _, _, err := a.List(context.Background(), audit.Filter{}, "nope", 10); !errors.Is(err, vault.ErrInvalidArgument) {
		t.Errorf("List(after \"nope\") = %v; want ErrInvalidArgument", err)
	}
}

// clock is a settable clock shared by a test and its audit log.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
