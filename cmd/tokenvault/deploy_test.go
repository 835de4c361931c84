package main

import (
	"path/filepath"
	"testing"
)

// The sidecar configurations shipped in deploy/kubernetes load with the
// sidecar's own strict decoder (no unknown key), keep the API on loopback,
// and open the three other listeners to the pod network.
func TestDeployConfigs(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("..", "..", "deploy", "kubernetes", "overlays", "*", "tokenvault.yaml"))
	if err != nil || len(paths) < 2 {
		t.Fatalf("overlay configs: %v, %v; want single and many", paths, err)
	}
	for _, p := range paths {
		cfg, err := loadConfig(p)
		if err != nil {
			t.Errorf("loadConfig(%s) = %v", p, err)
			continue
		}
		if dep, err := resolveListeners(cfg, serveFlags{}); err != nil || dep != "" {
			t.Errorf("%s: listeners: %q, %v", p, dep, err)
		}
		if err := checkAPIAddr(cfg.GRPCAddr); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		for _, a := range []string{cfg.PublicAddr, cfg.HealthAddr, cfg.MetricsAddr} {
			if err := checkLoopback(a, cfg.AllowNonLoopback); err != nil {
				t.Errorf("%s: %v", p, err)
			}
			if checkLoopback(a, false) == nil {
				t.Errorf("%s: %s is loopback: the kubelet and the ingress cannot reach it", p, a)
			}
		}
		if us := cfg.Auth.UnixSocket; us == nil || us.Path != "/run/tokenvault/grpc.sock" || len(us.Peers) == 0 {
			t.Errorf("%s: the app's unix socket with its peers is not configured", p)
		} else if _, err := unixSocketMode(us.Mode); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		if cfg.MasterKeyFile == "" {
			t.Errorf("%s: the master key is not read from a file", p)
		}
	}
}
