// Package storetest is the conformance suite for vault.Store: every
// implementation (bbolt, etcd, a test fake) runs it from its own tests.
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) vault.Store { return openTestStore(t) })
//	}
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
)

// Run runs the conformance suite. Each subtest calls open once for a new,
// empty Store of its own and closes it when done (Close must be idempotent,
// so open may also register a Close of its own). Subtests run one at a time.
func Run(t *testing.T, open func(t *testing.T) vault.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, st vault.Store)
	}{
		{"Get_NotFound", testGetNotFound},
		{"Get_ReturnsCopy", testGetReturnsCopy},
		{"Apply_Put", testApplyPut},
		{"Apply_EmptyValue", testApplyEmptyValue},
		{"Apply_DoesNotRetainValue", testApplyDoesNotRetainValue},
		{"Apply_IfRev", testApplyIfRev},
		{"Apply_ConflictWritesNothing", testApplyConflictWritesNothing},
		{"Apply_MultiOp", testApplyMultiOp},
		{"Apply_Delete", testApplyDelete},
		{"Apply_DuplicateKey", testApplyDuplicateKey},
		{"Apply_Check", testApplyCheck},
		{"Apply_ConcurrentCAS", testApplyConcurrentCAS},
		{"Revisions_Increase", testRevisionsIncrease},
		{"Revisions_NotReusedAfterDelete", testRevisionsNotReusedAfterDelete},
		{"Take", testTake},
		{"Take_Concurrent", testTakeConcurrent},
		{"Scan", testScan},
		{"Scan_EarlyStop", testScanEarlyStop},
		{"Scan_Error", testScanError},
		{"Scan_ValuesCopiedOut", testScanValuesCopiedOut},
		{"ContextCanceled", testContextCanceled},
		{"Close_Twice", testCloseTwice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := open(t)
			t.Cleanup(func() { st.Close() })
			tt.fn(t, st)
		})
	}
}

func put(key, value string) vault.Op {
	return vault.Op{Key: key, Value: []byte(value), IfRev: vault.AnyRev}
}

func mustApply(t *testing.T, st vault.Store, ops ...vault.Op) []uint64 {
	t.Helper()
	revs, err := st.Apply(t.Context(), ops...)
	if err != nil {
		t.Fatalf("Apply(%s) = %v; want nil error", opsString(ops), err)
	}
	if len(revs) != len(ops) {
		t.Fatalf("Apply(%s) returned %d revisions; want %d", opsString(ops), len(revs), len(ops))
	}
	return revs
}

// wantValue checks that key holds value at revision rev (any revision if
// rev is 0).
func wantValue(t *testing.T, st vault.Store, key, value string, rev uint64) {
	t.Helper()
	got, gotRev, err := st.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) = %v; want %q", key, err, value)
	}
	if string(got) != value || (rev != 0 && gotRev != rev) {
		t.Fatalf("Get(%q) = %q, rev %d; want %q, rev %d", key, got, gotRev, value, rev)
	}
}

func wantAbsent(t *testing.T, st vault.Store, key string) {
	t.Helper()
	got, rev, err := st.Get(t.Context(), key)
	if !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("Get(%q) = %q, rev %d, %v; want ErrNotFound", key, got, rev, err)
	}
}

func opsString(ops []vault.Op) string {
	var b bytes.Buffer
	for i, op := range ops {
		if i > 0 {
			b.WriteString(", ")
		}
		verb := "put"
		switch {
		case op.Check:
			verb = "check"
		case op.Delete:
			verb = "delete"
		}
		fmt.Fprintf(&b, "%s %q if %d", verb, op.Key, op.IfRev)
	}
	return b.String()
}

func testGetNotFound(t *testing.T, st vault.Store) {
	got, rev, err := st.Get(t.Context(), "conn/missing")
	if !errors.Is(err, vault.ErrNotFound) || got != nil || rev != 0 {
		t.Errorf("Get(%q) = %q, %d, %v; want nil, 0, ErrNotFound", "conn/missing", got, rev, err)
	}
}

func testGetReturnsCopy(t *testing.T, st vault.Store) {
	mustApply(t, st, put("k", "value"))
	got, _, err := st.Get(t.Context(), "k")
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		got[i] = 'X'
	}
	wantValue(t, st, "k", "value", 0)
}

func testApplyPut(t *testing.T, st vault.Store) {
	revs := mustApply(t, st, put("conn/1", "one"))
	if revs[0] == 0 {
		t.Fatalf("Apply(put) revision = 0; want > 0")
	}
	wantValue(t, st, "conn/1", "one", revs[0])
}

func testApplyEmptyValue(t *testing.T, st vault.Store) {
	revs := mustApply(t, st, vault.Op{Key: "empty", IfRev: vault.AnyRev})
	got, rev, err := st.Get(t.Context(), "empty")
	if err != nil || len(got) != 0 || rev != revs[0] {
		t.Errorf("Get(%q) = %q, %d, %v; want empty, %d, nil", "empty", got, rev, err, revs[0])
	}
}

func testApplyDoesNotRetainValue(t *testing.T, st vault.Store) {
	v := []byte("value")
	mustApply(t, st, vault.Op{Key: "k", Value: v, IfRev: vault.AnyRev})
	copy(v, "XXXXX")
	wantValue(t, st, "k", "value", 0)
}

func testApplyIfRev(t *testing.T, st vault.Store) {
	ctx := t.Context()
	// Each step runs against the state the previous ones left: rev is the
	// key's revision after the last successful step, prev the one before.
	var rev, prev uint64
	steps := []struct {
		name  string
		ifRev func() int64
		want  error
	}{
		{"create if absent", func() int64 { return 0 }, nil},
		{"create again", func() int64 { return 0 }, vault.ErrConflict},
		{"future revision", func() int64 { return int64(rev) + 1000 }, vault.ErrConflict},
		{"current revision", func() int64 { return int64(rev) }, nil},
		{"replaced revision", func() int64 { return int64(prev) }, vault.ErrConflict},
		{"any revision", func() int64 { return vault.AnyRev }, nil},
	}
	value := ""
	for i, s := range steps {
		op := vault.Op{Key: "k", Value: []byte(fmt.Sprint("v", i)), IfRev: s.ifRev()}
		revs, err := st.Apply(ctx, op)
		if !errors.Is(err, s.want) {
			t.Fatalf("%s: Apply(%s) = %v; want %v", s.name, opsString([]vault.Op{op}), err, s.want)
		}
		if err == nil {
			if revs[0] <= rev {
				t.Fatalf("%s: Apply(%s) revision = %d; want > %d", s.name, opsString([]vault.Op{op}), revs[0], rev)
			}
			prev, rev, value = rev, revs[0], string(op.Value)
		}
		wantValue(t, st, "k", value, rev)
	}
}

func testApplyConflictWritesNothing(t *testing.T, st vault.Store) {
	ctx := t.Context()
	revs := mustApply(t, st, put("a", "a0"), put("d", "d0"))
	ops := []vault.Op{
		put("b", "b1"),
		{Key: "c", Value: []byte("c1"), IfRev: 0},
		{Key: "d", Delete: true, IfRev: vault.AnyRev},
		{Key: "a", Value: []byte("a1"), IfRev: int64(revs[0]) + 99},
	}
	if got, err := st.Apply(ctx, ops...); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("Apply(%s) = %v, %v; want ErrConflict", opsString(ops), got, err)
	}
	wantValue(t, st, "a", "a0", revs[0])
	wantValue(t, st, "d", "d0", revs[1])
	wantAbsent(t, st, "b")
	wantAbsent(t, st, "c")
}

func testApplyMultiOp(t *testing.T, st vault.Store) {
	old := mustApply(t, st, put("z", "z0"), put("y", "y0"))
	ops := []vault.Op{
		put("x", "x1"),
		{Key: "y", Value: []byte("y1"), IfRev: int64(old[1])},
		{Key: "z", Delete: true, IfRev: int64(old[0])},
		{Key: "w", Value: []byte("w1"), IfRev: 0},
	}
	revs := mustApply(t, st, ops...)
	if revs[2] != 0 {
		t.Errorf("Apply(%s) revision of the delete = %d; want 0", opsString(ops), revs[2])
	}
	for i, key := range []string{"x", "y", "w"} {
		r := revs[[]int{0, 1, 3}[i]]
		if r <= old[1] {
			t.Errorf("Apply(%s) revision of %q = %d; want > %d", opsString(ops), key, r, old[1])
		}
		wantValue(t, st, key, key+"1", r)
	}
	wantAbsent(t, st, "z")
}

func testApplyDelete(t *testing.T, st vault.Store) {
	ctx := t.Context()
	rev := mustApply(t, st, put("k", "v"))[0]
	steps := []struct {
		name    string
		op      vault.Op
		want    error
		present bool // whether k exists afterwards
	}{
		{"absent key, any revision", vault.Op{Key: "nokey", Delete: true, IfRev: vault.AnyRev}, nil, true},
		{"absent key, must be absent", vault.Op{Key: "nokey", Delete: true, IfRev: 0}, nil, true},
		{"absent key, revision given", vault.Op{Key: "nokey", Delete: true, IfRev: 7}, vault.ErrConflict, true},
		{"wrong revision", vault.Op{Key: "k", Delete: true, IfRev: int64(rev) + 1}, vault.ErrConflict, true},
		{"must be absent", vault.Op{Key: "k", Delete: true, IfRev: 0}, vault.ErrConflict, true},
		{"current revision", vault.Op{Key: "k", Delete: true, IfRev: int64(rev)}, nil, false},
		{"again, any revision", vault.Op{Key: "k", Delete: true, IfRev: vault.AnyRev}, nil, false},
	}
	for _, s := range steps {
		revs, err := st.Apply(ctx, s.op)
		if !errors.Is(err, s.want) {
			t.Fatalf("%s: Apply(%s) = %v; want %v", s.name, opsString([]vault.Op{s.op}), err, s.want)
		}
		if err == nil && (len(revs) != 1 || revs[0] != 0) {
			t.Fatalf("%s: Apply(%s) = %v; want [0]", s.name, opsString([]vault.Op{s.op}), revs)
		}
		if s.present {
			wantValue(t, st, "k", "v", rev)
		} else {
			wantAbsent(t, st, "k")
		}
	}
}

func testApplyDuplicateKey(t *testing.T, st vault.Store) {
	ops := []vault.Op{put("k", "1"), put("other", "o"), put("k", "2")}
	if _, err := st.Apply(t.Context(), ops...); err == nil {
		t.Fatalf("Apply(%s) = nil; want an error (a key may appear once)", opsString(ops))
	}
	wantAbsent(t, st, "k")
	wantAbsent(t, st, "other")
}

// testApplyConcurrentCAS runs read-modify-write increments from many
// goroutines; compare-and-swap must lose none.
func testApplyConcurrentCAS(t *testing.T, st vault.Store) {
	const workers, increments = 20, 10
	ctx := t.Context()
	mustApply(t, st, put("counter", "0"))
	var conflicts atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range increments {
				for {
					v, rev, err := st.Get(ctx, "counter")
					if err != nil {
						errs <- err
						return
					}
					n, err := strconv.Atoi(string(v))
					if err != nil {
						errs <- err
						return
					}
					_, err = st.Apply(ctx, vault.Op{Key: "counter", Value: []byte(strconv.Itoa(n + 1)), IfRev: int64(rev)})
					if err == nil {
						break
					}
					if !errors.Is(err, vault.ErrConflict) {
						errs <- err
						return
					}
					conflicts.Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	wantValue(t, st, "counter", strconv.Itoa(workers*increments), 0)
	t.Logf("%d conflicts retried", conflicts.Load())
}

func testRevisionsIncrease(t *testing.T, st vault.Store) {
	var last uint64
	for i := range 10 {
		revs := mustApply(t, st, put("k", strconv.Itoa(i)))
		if revs[0] <= last {
			t.Fatalf("write %d: Apply(put k) revision = %d; want > %d", i, revs[0], last)
		}
		last = revs[0]
		mustApply(t, st, put("other", strconv.Itoa(i)))
	}
}

func testRevisionsNotReusedAfterDelete(t *testing.T, st vault.Store) {
	var seen []uint64
	for i := range 5 {
		revs := mustApply(t, st, vault.Op{Key: "k", Value: []byte("v"), IfRev: 0})
		if slices.Contains(seen, revs[0]) || (len(seen) > 0 && revs[0] <= slices.Max(seen)) {
			t.Fatalf("re-creation %d: revision = %d; want > every earlier revision %v", i, revs[0], seen)
		}
		seen = append(seen, revs[0])
		mustApply(t, st, vault.Op{Key: "k", Delete: true, IfRev: int64(revs[0])})
		if _, err := st.Take(t.Context(), "k"); !errors.Is(err, vault.ErrNotFound) {
			t.Fatalf("Take(%q) after delete = %v; want ErrNotFound", "k", err)
		}
	}
}

func testTake(t *testing.T, st vault.Store) {
	ctx := t.Context()
	mustApply(t, st, put("state/1", "flow"), put("state/2", "other"))
	got, err := st.Take(ctx, "state/1")
	if err != nil || string(got) != "flow" {
		t.Fatalf("Take(%q) = %q, %v; want %q, nil", "state/1", got, err, "flow")
	}
	wantAbsent(t, st, "state/1")
	wantValue(t, st, "state/2", "other", 0)
	if got, err := st.Take(ctx, "state/1"); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("second Take(%q) = %q, %v; want ErrNotFound", "state/1", got, err)
	}
	if got, err := st.Take(ctx, "never"); !errors.Is(err, vault.ErrNotFound) {
		t.Fatalf("Take(%q) = %q, %v; want ErrNotFound", "never", got, err)
	}
}

// testTakeConcurrent races many Takes of one key: exactly one gets it.
func testTakeConcurrent(t *testing.T, st vault.Store) {
	const takers, rounds = 50, 3
	ctx := t.Context()
	for round := range rounds {
		key := fmt.Sprintf("state/%d", round)
		mustApply(t, st, put(key, "secret"))
		var (
			wg     sync.WaitGroup
			start  = make(chan struct{})
			got    atomic.Int64
			others = make(chan error, takers)
		)
		for range takers {
			wg.Go(func() {
				<-start
				v, err := st.Take(ctx, key)
				switch {
				case err == nil && string(v) == "secret":
					got.Add(1)
				case errors.Is(err, vault.ErrNotFound):
				default:
					others <- fmt.Errorf("Take(%q) = %q, %v; want %q or ErrNotFound", key, v, err, "secret")
				}
			})
		}
		close(start)
		wg.Wait()
		close(others)
		for err := range others {
			t.Error(err)
		}
		if n := got.Load(); n != 1 {
			t.Fatalf("round %d: %d of %d concurrent Takes got the value; want exactly 1", round, n, takers)
		}
		wantAbsent(t, st, key)
	}
}

type scanned struct {
	key, value string
	rev        uint64
}

func scanAll(t *testing.T, st vault.Store, prefix, after string) []scanned {
	t.Helper()
	var got []scanned
	err := st.Scan(t.Context(), prefix, after, func(key string, value []byte, rev uint64) (bool, error) {
		got = append(got, scanned{key, string(value), rev})
		return true, nil
	})
	if err != nil {
		t.Fatalf("Scan(%q, %q) = %v; want nil", prefix, after, err)
	}
	return got
}

func testScan(t *testing.T, st vault.Store) {
	// Written out of order, one Apply each, so revisions differ.
	keys := []string{"b/1", "a/2", "a", "a0", "a/1", "a/3", "c"}
	revs := map[string]uint64{}
	for _, k := range keys {
		revs[k] = mustApply(t, st, put(k, "value of "+k))[0]
	}
	tests := []struct {
		prefix, after string
		want          []string
	}{
		{"a/", "", []string{"a/1", "a/2", "a/3"}},
		{"a/", "a/1", []string{"a/2", "a/3"}},
		{"a/", "a/15", []string{"a/2", "a/3"}}, // after need not exist
		{"a/", "a/3", nil},
		{"a/", "a", []string{"a/1", "a/2", "a/3"}}, // after sorts before the prefix
		{"a/", "b", nil},
		{"a", "", []string{"a", "a/1", "a/2", "a/3", "a0"}},
		{"", "", []string{"a", "a/1", "a/2", "a/3", "a0", "b/1", "c"}},
		{"", "a0", []string{"b/1", "c"}},
		{"b", "", []string{"b/1"}},
		{"d", "", nil},
		{"a/1", "", []string{"a/1"}},
	}
	for _, tt := range tests {
		got := scanAll(t, st, tt.prefix, tt.after)
		var gotKeys []string
		for _, s := range got {
			gotKeys = append(gotKeys, s.key)
			if s.value != "value of "+s.key || s.rev != revs[s.key] {
				t.Errorf("Scan(%q, %q) gave %q = %q, rev %d; want %q, rev %d", tt.prefix, tt.after, s.key, s.value, s.rev, "value of "+s.key, revs[s.key])
			}
		}
		if !slices.Equal(gotKeys, tt.want) {
			t.Errorf("Scan(%q, %q) keys = %q; want %q", tt.prefix, tt.after, gotKeys, tt.want)
		}
	}
}

func testScanEarlyStop(t *testing.T, st vault.Store) {
	for i := range 5 {
		mustApply(t, st, put(fmt.Sprintf("k/%d", i), "v"))
	}
	var got []string
	err := st.Scan(t.Context(), "k/", "", func(key string, _ []byte, _ uint64) (bool, error) {
		got = append(got, key)
		return len(got) < 2, nil
	})
	if err != nil || !slices.Equal(got, []string{"k/0", "k/1"}) {
		t.Errorf("Scan stopping after 2 = %q, %v; want [k/0 k/1], nil", got, err)
	}
}

func testScanError(t *testing.T, st vault.Store) {
	for i := range 3 {
		mustApply(t, st, put(fmt.Sprintf("k/%d", i), "v"))
	}
	errStop := errors.New("stop here")
	calls := 0
	err := st.Scan(t.Context(), "k/", "", func(string, []byte, uint64) (bool, error) {
		calls++
		return true, errStop
	})
	if !errors.Is(err, errStop) || calls != 1 {
		t.Errorf("Scan with fn failing = %v after %d calls; want %v after 1", err, calls, errStop)
	}
}

// testScanValuesCopiedOut keeps copies made inside fn (as the contract
// asks) and checks they stay intact through later writes.
func testScanValuesCopiedOut(t *testing.T, st vault.Store) {
	want := map[string]string{}
	for i := range 20 {
		k := fmt.Sprintf("k/%02d", i)
		want[k] = string(bytes.Repeat([]byte{byte('a' + i)}, 100+i*37))
		mustApply(t, st, put(k, want[k]))
	}
	kept := map[string][]byte{}
	err := st.Scan(t.Context(), "k/", "", func(key string, value []byte, _ uint64) (bool, error) {
		kept[key] = bytes.Clone(value)
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k := range want {
		mustApply(t, st, put(k, "overwritten"))
	}
	if len(kept) != len(want) {
		t.Fatalf("Scan visited %d keys; want %d", len(kept), len(want))
	}
	for k, v := range want {
		if string(kept[k]) != v {
			t.Errorf("Scan value of %q = %d bytes %.8q...; want %d bytes %.8q...", k, len(kept[k]), kept[k], len(v), v)
		}
	}
}

func testContextCanceled(t *testing.T, st vault.Store) {
	mustApply(t, st, put("k", "v"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := st.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get(canceled, %q) = %v; want context.Canceled", "k", err)
	}
	if _, err := st.Apply(ctx, put("k", "new"), put("new", "x")); !errors.Is(err, context.Canceled) {
		t.Errorf("Apply(canceled, ...) = %v; want context.Canceled", err)
	}
	if _, err := st.Take(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Take(canceled, %q) = %v; want context.Canceled", "k", err)
	}
	err := st.Scan(ctx, "", "", func(string, []byte, uint64) (bool, error) {
		t.Error("Scan(canceled) called fn")
		return true, nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Scan(canceled) = %v; want context.Canceled", err)
	}
	wantValue(t, st, "k", "v", 0)
	wantAbsent(t, st, "new")
}

func testCloseTwice(t *testing.T, st vault.Store) {
	if err := st.Close(); err != nil {
		t.Fatalf("Close() = %v; want nil", err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("second Close() = %v; want nil", err)
	}
}

// testApplyCheck: a compare-only op gates the others and writes nothing.
func testApplyCheck(t *testing.T, st vault.Store) {
	ctx := t.Context()
	fence := mustApply(t, st, put("lock/k", "holder"))[0]
	check := func(rev uint64) vault.Op { return vault.Op{Key: "lock/k", Check: true, IfRev: int64(rev)} }
	revs := mustApply(t, st, put("conn/1", "v1"), check(fence))
	if revs[1] != 0 {
		t.Errorf("Apply(put, check) revision of the check = %d; want 0", revs[1])
	}
	wantValue(t, st, "lock/k", "holder", fence) // not rewritten
	wantValue(t, st, "conn/1", "v1", revs[0])
	// The fence moves on (another holder): the check fails, nothing is written.
	mustApply(t, st, put("lock/k", "other holder"))
	ops := []vault.Op{put("conn/1", "v2"), check(fence)}
	if _, err := st.Apply(ctx, ops...); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("Apply(%s) with a moved fence = %v; want ErrConflict", opsString(ops), err)
	}
	wantValue(t, st, "conn/1", "v1", revs[0])
	// Gone altogether (released, expired): the same.
	mustApply(t, st, vault.Op{Key: "lock/k", Delete: true, IfRev: vault.AnyRev})
	if _, err := st.Apply(ctx, ops...); !errors.Is(err, vault.ErrConflict) {
		t.Fatalf("Apply(%s) with the fence gone = %v; want ErrConflict", opsString(ops), err)
	}
	wantValue(t, st, "conn/1", "v1", revs[0])
	// A check needs a revision.
	bad := []vault.Op{put("conn/1", "v3"), {Key: "lock/k", Check: true, IfRev: vault.AnyRev}}
	if _, err := st.Apply(ctx, bad...); err == nil {
		t.Errorf("Apply(%s) = nil; want an error (a check without a revision)", opsString(bad))
	}
	wantValue(t, st, "conn/1", "v1", revs[0])
}
