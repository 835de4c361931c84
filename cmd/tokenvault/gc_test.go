package main

import (
	"runtime/debug"
	"testing"
)

// TestStartingGC: the sidecar starts under startGOGC and serves under
// servingGC (with its small heap, a GOGC far above servingGC.Percent, so
// that the heap reaches servingGC.Floor); a GOGC from the environment is
// never overridden.
func TestStartingGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	serving := startingGC(func(string) string { return "" })
	if got := debug.SetGCPercent(startGOGC); got != startGOGC {
		t.Fatalf("while starting: GOGC %d; want %d", got, startGOGC)
	}
	stop := serving()
	if got := debug.SetGCPercent(startGOGC); got <= servingGC.Percent || got == startGOGC {
		t.Fatalf("serving: GOGC %d; want servingGC's, above %d", got, servingGC.Percent)
	}
	stop()
	if got := debug.SetGCPercent(100); got != servingGC.Percent {
		t.Fatalf("stopped: GOGC %d; want %d", got, servingGC.Percent)
	}

	debug.SetGCPercent(123)
	serving = startingGC(func(k string) string {
		if k == "GOGC" {
			return "123"
		}
		return ""
	})
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d while starting; want 123", got)
	}
	stop = serving()
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d serving; want 123", got)
	}
	stop()
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d after serving; want 123", got)
	}
}
