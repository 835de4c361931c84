package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault/seal"
)

// TestCheckFileModes: a data dir writable by group or others, a database
// or master key open to others or writable by the group are refused
// outside dev mode with the path, its mode and a chmod that fixes it, and
// only warned about in dev mode; the modes tokenvault creates, and a
// group-readable key (Kubernetes' fsGroup), pass.
func TestCheckFileModes(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no Unix modes")
	}
	for _, tc := range []struct {
		name            string
		dir, db, key    os.FileMode
		wantPath, wantM string // "" when accepted
	}{
		{"as created", 0o700, 0o600, 0o600, "", ""},
		{"key group-readable", 0o700, 0o600, 0o440, "", ""},
		{"dir 0755", 0o755, 0o600, 0o600, "", ""},
		{"dir 0777", 0o777, 0o600, 0o600, "data", "0777"},
		{"dir group-writable", 0o770, 0o600, 0o600, "data", "0770"},
		{"database 0666", 0o700, 0o666, 0o600, "data/tokenvault.db", "0666"},
		{"database 0644", 0o700, 0o644, 0o600, "data/tokenvault.db", "0644"},
		{"key 0644", 0o700, 0o600, 0o644, "master-key", "0644"},
		{"key 0660", 0o700, 0o600, 0o660, "master-key", "0660"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			dir := filepath.Join(root, "data")
			db := filepath.Join(dir, "tokenvault.db")
			key := filepath.Join(root, "master-key")
			for _, f := range []string{db, key} {
				if err := os.MkdirAll(filepath.Dir(f), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for p, m := range map[string]os.FileMode{dir: tc.dir, db: tc.db, key: tc.key} {
				if err := os.Chmod(p, m); err != nil {
					t.Fatal(err)
				}
			}
			err := checkFileModes(dir, db, key, false, slog.New(slog.DiscardHandler))
			if tc.wantPath == "" {
				if err != nil {
					t.Errorf("checkFileModes = %v; want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), filepath.Join(root, tc.wantPath)) || !strings.Contains(err.Error(), "mode "+tc.wantM) || !strings.Contains(err.Error(), "chmod ") {
				t.Errorf("checkFileModes = %v; want an error naming %s, mode %s and a chmod", err, tc.wantPath, tc.wantM)
			}
			var logs bytes.Buffer
			if err := checkFileModes(dir, db, key, true, slog.New(slog.NewTextHandler(&logs, nil))); err != nil || !strings.Contains(logs.String(), "too open") {
				t.Errorf("dev mode: checkFileModes = %v, logged %q; want nil and a warning", err, logs.String())
			}
		})
	}
}

// TestServe_RefusesOpenMasterKey: serve, outside dev mode, refuses to
// start with a master-key file others can read, before opening anything.
func TestServe_RefusesOpenMasterKey(t *testing.T) {
	dir := t.TempDir()
	mk, _ := seal.GenerateMasterKey()
	keyPath := filepath.Join(dir, "master.key")
	if err := os.WriteFile(keyPath, []byte(mk.Encode()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(keyPath, 0o644) // whatever the umask
	cfgPath := filepath.Join(dir, "tokenvault.yaml")
	cfg := "data_dir: " + filepath.Join(dir, "data") + "\nmaster_key_file: " + keyPath + "\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	// Bounded: a sidecar that starts anyway stops after a few seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code := Main(ctx, []string{"serve", "--config", cfgPath, "--grpc-addr", "127.0.0.1:0", "--public-addr", "127.0.0.1:0", "--health-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"},
		func(string) string { return "" }, io.Discard, &stderr)
	if code == 0 || !strings.Contains(stderr.String(), keyPath) || !strings.Contains(stderr.String(), "too open") {
		t.Errorf("serve with a 0644 master key = %d, %q; want a refusal naming the file", code, stderr.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "tokenvault.db")); err == nil {
		t.Error("the database was created; want nothing opened")
	}
}
