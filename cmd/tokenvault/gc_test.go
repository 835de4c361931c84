package main

import (
	"runtime/debug"
	"testing"
)

// TestStartingGC: the sidecar starts under startGOGC and serves under
// defaultGOGC; a GOGC from the environment is never overridden.
func TestStartingGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	serving := startingGC(func(string) string { return "" })
	if got := debug.SetGCPercent(startGOGC); got != startGOGC {
		t.Fatalf("while starting: GOGC %d; want %d", got, startGOGC)
	}
	serving()
	if got := debug.SetGCPercent(defaultGOGC); got != defaultGOGC {
		t.Fatalf("serving: GOGC %d; want %d", got, defaultGOGC)
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
	serving()
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d serving; want 123", got)
	}
}
