//go:build !failpoint

package main

import "log/slog"

// failpoint returns nil: a build without the failpoint tag (every release)
// has no crash hook, and says so if asked for one.
func failpoint(env func(string) string, log *slog.Logger) func(string) {
	if want := env(failpointEnv); want != "" {
		log.Warn("ignoring "+failpointEnv+": failpoints exist only in test builds (-tags failpoint)", slog.String("failpoint", want))
	}
	return nil
}
