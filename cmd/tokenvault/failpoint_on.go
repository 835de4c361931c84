//go:build failpoint

package main

import (
	"log/slog"
	"os"
)

// failpoint returns the vault's Config.Failpoint for env, nil (no cost)
// unless failpointEnv is set. Test builds only (the failpoint tag).
func failpoint(env func(string) string, log *slog.Logger) func(string) {
	want := env(failpointEnv)
	if want == "" {
		return nil
	}
	log.Warn("TEST ONLY: failpoint armed; the process will kill itself there", slog.String("failpoint", want))
	return func(name string) {
		if name != want {
			return
		}
		p, err := os.FindProcess(os.Getpid())
		if err == nil {
			p.Kill() // SIGKILL on Unix: nothing after this point runs
		}
		select {} // until the signal lands
	}
}
