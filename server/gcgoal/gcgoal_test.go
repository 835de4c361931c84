package gcgoal

import (
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	c := Config{Percent: 50, Floor: 32 * mib}
	for _, tc := range []struct {
		name       string
		live, scan uint64
		want       int
	}{
		{"small heap: the floor sets the goal", 4 * mib, 0, 700},
		{"stacks and globals count in GOGC's base", 3 * mib, 1 * mib, 725},
		{"heap past the floor: GOGC as configured", 100 * mib, 1 * mib, 50},
		{"floor just above live × 1.5: never below Percent", 30 * mib, 0, 50},
		{"nothing measured yet", 0, 0, 50},
	} {
		if got := c.percent(tc.live, tc.scan); got != tc.want {
			t.Errorf("%s: percent(%d, %d) = %d, want %d", tc.name, tc.live, tc.scan, got, tc.want)
		}
	}
	if got := (Config{Percent: 50}).percent(4*mib, 0); got != 50 {
		t.Errorf("no floor: %d, want 50", got)
	}
}

// gogc reads GOGC without changing it.
func gogc() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

var (
	sink []byte
	held [][]byte // live heap
)

// churn allocates n bytes of garbage in 4 KiB pieces and returns how many
// collections ran meanwhile.
func churn(n int) uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.NumGC
	for range n / 4096 {
		sink = make([]byte, 4096)
	}
	runtime.ReadMemStats(&ms)
	return ms.NumGC - before
}

// A small heap under allocation collects rarely with a floor, and as often
// as GOGC says without one; each collection re-applies the goal.
func TestStart_FloorMakesCollectionsRare(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	runtime.GC()
	debug.SetGCPercent(50)
	without := churn(64 << 20)

	stop := Start(Config{Percent: 50, Floor: 64 << 20})
	runtime.GC() // a cycle, so the tuner has heard of one and re-armed
	runtime.GC()
	with := churn(48 << 20) // below the floor
	if p := gogc(); p <= 50 {
		t.Errorf("GOGC %d after collections with a 64 MiB floor and a small heap, want above 50", p)
	}
	stop()
	if p := gogc(); p != 50 {
		t.Errorf("GOGC %d after stop, want 50", p)
	}
	t.Logf("collections: %d while allocating 64 MiB at GOGC 50, %d while allocating 48 MiB with a 64 MiB floor", without, with)
	if with > 1 || without < 5 {
		t.Errorf("collections: %d with the floor, %d without; want at most 1 and at least 5", with, without)
	}
}

// A heap that grows past the floor grows by Percent, as plain GOGC: the
// goal follows the live heap from collection to collection.
func TestStart_GrowingHeapFallsBackToPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	runtime.GC()
	stop := Start(Config{Percent: 50, Floor: 16 << 20})
	defer stop()
	if p := gogc(); p <= 50 {
		t.Fatalf("GOGC %d with a small heap and a 16 MiB floor, want above 50", p)
	}
	for range 96 {
		held = append(held, make([]byte, 1<<20))
	}
	// The tuner runs on the finalizer goroutine after a collection:
	// collect until it has (bounded).
	for i := 0; i < 200 && gogc() != 50; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if p := gogc(); p != 50 {
		t.Errorf("GOGC %d with 96 MiB live and a 16 MiB floor, want 50", p)
	}
	// And back: the tuner re-arms after every collection.
	held = nil
	for i := 0; i < 200 && gogc() == 50; i++ {
		runtime.GC()
		time.Sleep(time.Millisecond)
	}
	if p := gogc(); p <= 50 {
		t.Errorf("GOGC %d once the heap is small again, want above 50", p)
	}
}
