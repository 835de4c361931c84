//go:build !failpoint

package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
)

// TestFailpoint_ProductionBuildIgnoresEnv: a build without the failpoint
// tag, like this test's and every release, arms no crash hook whatever
// TOKENVAULT_FAILPOINT says, and warns that it ignored it.
func TestFailpoint_ProductionBuildIgnoresEnv(t *testing.T) {
	for _, point := range []string{vault.FailpointBeforeProviderCall, vault.FailpointAfterProviderAnswer, vault.FailpointAfterCommit} {
		var logs bytes.Buffer
		env := func(k string) string {
			if k == failpointEnv {
				return point
			}
			return ""
		}
		if f := failpoint(env, slog.New(slog.NewTextHandler(&logs, nil))); f != nil {
			t.Errorf("failpoint(%s=%s) armed a hook; want none outside test builds", failpointEnv, point)
		}
		if !strings.Contains(logs.String(), "ignoring "+failpointEnv) {
			t.Errorf("failpoint(%s=%s) logged %q; want a warning that it is ignored", failpointEnv, point, logs.String())
		}
	}
}
