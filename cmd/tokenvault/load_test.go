package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// scanFails is a store whose connection records cannot be read in bulk.
type scanFails struct{ vault.Store }

var errScan = errors.New("the disk went away")

func (s scanFails) Scan(ctx context.Context, prefix, after string, fn func(string, []byte, uint64) (bool, error)) error {
	if prefix == "conn/" {
		return errScan
	}
	return s.Store.Scan(ctx, prefix, after, fn)
}

// TestAwaitLoad: serve goes on serving once the connections are loaded,
// under the serving GC target; a load that fails stops it, and serve
// returns the load's error.
func TestAwaitLoad(t *testing.T) {
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	open := func(st vault.Store) *vault.Vault {
		kr, err := vault.OpenKeyring(context.Background(), st, mk)
		if err != nil {
			t.Fatal(err)
		}
		v, err := vault.Open(context.Background(), vault.Config{Store: st, Keyring: kr, LoadInBackground: true})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	st, err := bolt.Open(filepath.Join(t.TempDir(), "v.db"), bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	served, stopped := false, false
	go func() { time.Sleep(freeOSAfter + 100*time.Millisecond); cancel() }() // awaitLoad returns when serving stops
	if err := awaitLoad(ctx, open(st), func() func() { served = true; return func() {} }, func() { stopped = true }, log); err != nil || !served || stopped {
		t.Fatalf("awaitLoad(loads) = %v, serving GC %v, stopped %v; want nil, true, false", err, served, stopped)
	}
	if !strings.Contains(logs.String(), `"msg":"connections loaded"`) {
		t.Fatalf("no line says the connections loaded:\n%s", logs.String())
	}

	served, stopped = false, false
	err = awaitLoad(context.Background(), open(scanFails{st}), func() func() { served = true; return func() {} }, func() { stopped = true }, log)
	if !errors.Is(err, errScan) || served || !stopped {
		t.Fatalf("awaitLoad(fails) = %v, serving GC %v, stopped %v; want the scan's error, false, true", err, served, stopped)
	}
}
