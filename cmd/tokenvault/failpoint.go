package main

// failpointEnv names the crash-test hook: in a binary built with the
// failpoint build tag (go build -tags failpoint), set it to a
// vault.Failpoint* name and the process kills itself (SIGKILL, no cleanup)
// when a refresh reaches that point. The crash test builds such a binary
// for itself (cmd/tokenvault/crash_test.go); a binary built without the tag
// (every release) has no such code and ignores the variable, with a
// warning.
const failpointEnv = "TOKENVAULT_FAILPOINT"
