// Package gcgoal keeps the garbage collector's heap goal proportional to
// the live heap, as GOGC does, but never below a floor.
//
// GOGC alone sets the goal at live × (1 + GOGC/100). The sidecar's live
// heap is mostly its resident connections, so a small GOGC (50) keeps a
// large vault's memory near what it holds. But a sidecar with few
// connections has a live heap of a few MiB, and at GOGC 50 the runtime
// collects every 2 MiB of allocation: under a load of token reads (grpc-go
// allocates some KiB a call) that is dozens of collections a second, each
// with fixed costs (stacks, globals, the mark of the whole live heap) and a
// window in which calls are slower. A floor on the goal makes those
// collections rare without letting a large heap grow by more than GOGC
// allows.
//
// The runtime has no such floor, so Start sets GOGC after every
// collection: goal = max(live × (1 + Percent/100), Floor). A memory limit
// (GOMEMLIMIT, debug.SetMemoryLimit) still holds: the runtime collects
// sooner whenever the limit requires it.
package gcgoal

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// Config is how the goal is set.
type Config struct {
	// Percent is the goal's growth over the live heap, as GOGC.
	Percent int
	// Floor is the smallest goal, in bytes: no collection is started
	// before the heap reaches it (unless a memory limit requires one).
	Floor int64
}

// Sidecar is how the sidecar's collector runs once it serves, unless GOGC
// is set (cmd/tokenvault; the hot-path benchmark's sidecar uses it too):
// GOGC 50 over the live heap, but no collection before the heap reaches
// 32 MiB. Most of a large vault's heap is its resident connections (about
// 600 bytes each), which live as long as the process: collecting when the
// heap has grown by half of them rather than all of them keeps 100,000
// connections under 150 MiB resident, for a few percent more GC CPU. A
// small vault's live heap is a few MiB, and at GOGC 50 alone the collector
// ran every 2 MiB of allocation: dozens of collections a second under a
// load of token reads, with their share of each call's CPU and most of its
// tail latency (README, Performance).
var Sidecar = Config{Percent: 50, Floor: 32 << 20}

// metric names read after each collection: the heap marked live, and the
// stacks and globals the collector scans, which GOGC's growth also counts.
var names = [...]string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// percent returns the GOGC value that puts the goal at max(live ×
// (1 + c.Percent/100), c.Floor), given the live heap and the scanned stacks
// and globals in bytes. The runtime's goal is live + (live + stacks +
// globals) × GOGC/100.
func (c Config) percent(live, scan uint64) int {
	base := live + scan
	if base == 0 || c.Floor <= 0 || uint64(c.Floor) <= live {
		return c.Percent
	}
	p := int((uint64(c.Floor) - live) * 100 / base)
	return max(p, c.Percent)
}

// Start sets GOGC now and again after every collection, until stop is
// called; stop leaves GOGC at c.Percent. Only one Start should be running in
// a process (GOGC is global).
func Start(c Config) (stop func()) {
	t := &tuner{cfg: c}
	for i, n := range names {
		t.samples[i].Name = n
	}
	t.tune()
	t.arm()
	return func() {
		t.mu.Lock()
		t.stopped = true
		t.mu.Unlock()
		debug.SetGCPercent(c.Percent)
	}
}

type tuner struct {
	cfg     Config
	mu      sync.Mutex // guards stopped and samples
	stopped bool
	samples [len(names)]metrics.Sample
}

// sentinel is garbage as soon as it is made: its finalizer runs after the
// collection that finds it, which is how the tuner hears of each cycle. It
// holds a pointer so that the allocator does not batch it with other tiny
// objects (which would delay its finalizer).
type sentinel struct{ t *tuner }

func (t *tuner) arm() {
	runtime.SetFinalizer(&sentinel{t: t}, func(s *sentinel) {
		if s.t.tune() {
			s.t.arm()
		}
	})
}

// tune sets GOGC from the last collection's figures; it reports whether
// the tuner is still running.
func (t *tuner) tune() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	metrics.Read(t.samples[:])
	var v [len(names)]uint64
	for i, s := range t.samples {
		if s.Value.Kind() == metrics.KindUint64 {
			v[i] = s.Value.Uint64()
		}
	}
	debug.SetGCPercent(t.cfg.percent(v[0], v[1]+v[2]))
	return true
}
