package main

import (
	"runtime/debug"
	"testing"
)

// TestLoadingGC: the vault opens under loadGOGC and serving goes on under
// the setting before; a GOGC from the environment is never overridden.
func TestLoadingGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(defaultGOGC))
	restore := loadingGC(func(string) string { return "" })
	if got := debug.SetGCPercent(loadGOGC); got != loadGOGC {
		t.Fatalf("while loading: GOGC %d; want %d", got, loadGOGC)
	}
	restore()
	if got := debug.SetGCPercent(defaultGOGC); got != defaultGOGC {
		t.Fatalf("after loading: GOGC %d; want %d back", got, defaultGOGC)
	}

	debug.SetGCPercent(123)
	restore = loadingGC(func(k string) string {
		if k == "GOGC" {
			return "123"
		}
		return ""
	})
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d while loading; want 123", got)
	}
	restore()
	if got := debug.SetGCPercent(123); got != 123 {
		t.Fatalf("with GOGC=123 set: GOGC %d after loading; want 123", got)
	}
}
