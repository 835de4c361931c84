package server

import "testing"

// SetWatchBuffer sets how many new events wait for one WatchEvents stream,
// until the test ends. Call it before any server of the test starts.
func SetWatchBuffer(t testing.TB, n int) {
	old := watchBuffer
	watchBuffer = n
	t.Cleanup(func() { watchBuffer = old })
}
