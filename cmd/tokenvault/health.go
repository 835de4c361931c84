package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// version is the release, stamped at build time:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/tokenvault
//
// Unstamped builds report the module version Go recorded, or "devel".
var version = ""

// buildVersion returns the stamped version, else what the build recorded.
func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		v := bi.Main.Version
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "+" + s.Value[:12]
			}
		}
		if v != "" && v != "(devel)" {
			return v
		}
	}
	return "devel"
}

// versionCmd prints `tokenvault <version> <go version> <os>/<arch>`.
func versionCmd(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return fmt.Errorf("version takes no arguments, got %q", args)
	}
	fmt.Fprintf(stdout, "tokenvault %s %s %s/%s\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}

// healthCmd asks a running sidecar's health listener whether it is ready
// (/readyz) or, with --live, alive (/healthz). It returns nil when the
// answer is 200, so the command exits 0, and an error (exit 1) otherwise:
// an exec probe needs nothing but the binary.
func healthCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", cmp.Or(env("TOKENVAULT_HEALTH_ADDR"), defaultHealthAddr), "the sidecar's health listener, host:port")
	live := fs.Bool("live", false, "check liveness (/healthz) instead of readiness (/readyz)")
	timeout := fs.Duration("timeout", 2*time.Second, "give up after this long")
	quiet := fs.Bool("q", false, "print nothing when healthy")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "health takes no arguments, got %q\n", fs.Args())
		return errUsage
	}
	path := "/readyz"
	if *live {
		path = "/healthz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s:\n%s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	if !*quiet {
		fmt.Fprint(stdout, string(body))
	}
	return nil
}
