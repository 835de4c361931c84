package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// Batches of a migration: etcd's default --max-txn-ops is 128, and a batch
// stays well within its request size limit.
const (
	migrateBatchOps   = 64
	migrateBatchBytes = 512 * 1024
)

func storeCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "migrate" {
		fmt.Fprintln(stderr, "usage: tokenvault store migrate --from FILE --to CONFIG [--force]")
		return errUsage
	}
	fs := flag.NewFlagSet("store migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the bbolt file to copy from (tokenvault.db in the data dir); the sidecar using it must be stopped")
	to := fs.String("to", "", "a tokenvault config file whose store block (kind: etcd) names the target")
	force := fs.Bool("force", false, "overwrite a target that already holds other records: it becomes an exact copy of the source")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if *from == "" || *to == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: tokenvault store migrate --from FILE --to CONFIG [--force]")
		return errUsage
	}
	cfg, err := loadConfig(*to)
	if err != nil {
		return err
	}
	if cfg.Store == nil || cfg.Store.Kind != "etcd" {
		return fmt.Errorf("%s has no store block of kind etcd to migrate to", *to)
	}
	src, err := bolt.Open(*from, bolt.Options{})
	if errors.Is(err, bolt.ErrLocked) {
		return fmt.Errorf("%w (stop the sidecar using it first)", err)
	}
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := openStore(ctx, cfg.Store, "", env)
	if err != nil {
		return err
	}
	defer dst.Close()
	res, err := migrateStore(ctx, src, dst, *force)
	if err != nil {
		return err
	}
	switch {
	case res.AlreadyDone:
		fmt.Fprintf(stdout, "already migrated: the target holds the same %d records (%d connections); nothing written\n", res.Records, res.Connections)
	default:
		fmt.Fprintf(stdout, "copied %d records (%d connections), %d stale target records removed, in %v; verified: the target holds exactly the source's records\n",
			res.Records, res.Connections, res.Removed, res.Took.Round(time.Millisecond))
	}
	return nil
}

// migrateResult is what migrateStore did.
type migrateResult struct {
	Records, Connections int
	// Removed counts target records absent from the source (--force).
	Removed int
	// AlreadyDone: the target held exactly the source's records.
	AlreadyDone bool
	Took        time.Duration
}

// migrateStore copies every record of src to dst byte for byte: sealed
// values stay sealed under the same keyring, which travels with them
// (meta/keyring), and stay bound to the same keys. Run again on a target
// that already holds exactly the source's records it writes nothing; a
// target holding anything else is refused unless force, which makes it an
// exact copy (writing over and removing what differs). Without force every
// write requires the key to be absent, so a sidecar writing to the target
// meanwhile makes the migration fail rather than be overwritten. At the end
// it reads the whole target back and compares it with the source.
func migrateStore(ctx context.Context, src, dst vault.Store, force bool) (migrateResult, error) {
	start := time.Now()
	var res migrateResult
	want, err := digests(ctx, src)
	if err != nil {
		return res, fmt.Errorf("read source: %w", err)
	}
	res.Records = len(want)
	for k := range want {
		if strings.HasPrefix(k, "conn/") {
			res.Connections++
		}
	}
	have, err := digests(ctx, dst)
	if err != nil {
		return res, fmt.Errorf("read target: %w", err)
	}
	if len(have) > 0 {
		if diff := diffDigests(want, have); diff == "" {
			res.AlreadyDone, res.Took = true, time.Since(start)
			return res, nil
		} else if !force {
			return res, fmt.Errorf("the target already holds %d records (%s); refusing to overwrite it without --force", len(have), diff)
		}
	}
	ifRev := int64(0)
	if force {
		ifRev = vault.AnyRev
	}
	// Copy in batches; Scan hands out values valid only during fn, and fn
	// must not call its store, so each batch is collected, then written.
	var after string
	for {
		var batch []vault.Op
		size := 0
		err := src.Scan(ctx, "", after, func(key string, value []byte, _ uint64) (bool, error) {
			if force {
				if d, ok := have[key]; ok && d == sha256.Sum256(value) {
					after = key
					return true, nil // already there, byte for byte
				}
			}
			batch = append(batch, vault.Op{Key: key, Value: bytes.Clone(value), IfRev: ifRev})
			size += len(key) + len(value)
			after = key
			return len(batch) < migrateBatchOps && size < migrateBatchBytes, nil
		})
		if err != nil {
			return res, fmt.Errorf("read source: %w", err)
		}
		if len(batch) == 0 {
			break
		}
		if _, err := dst.Apply(ctx, batch...); err != nil {
			if errors.Is(err, vault.ErrConflict) {
				return res, fmt.Errorf("write target: a key appeared there during the migration (is a sidecar using it?): %w", err)
			}
			return res, fmt.Errorf("write target: %w", err)
		}
	}
	var stale []vault.Op
	for k := range have {
		if _, ok := want[k]; !ok {
			stale = append(stale, vault.Op{Key: k, Delete: true, IfRev: vault.AnyRev})
		}
	}
	slices.SortFunc(stale, func(a, b vault.Op) int { return strings.Compare(a.Key, b.Key) })
	for ops := range slices.Chunk(stale, migrateBatchOps) {
		if _, err := dst.Apply(ctx, ops...); err != nil {
			return res, fmt.Errorf("remove stale target records: %w", err)
		}
	}
	res.Removed = len(stale)
	got, err := digests(ctx, dst)
	if err != nil {
		return res, fmt.Errorf("verify target: %w", err)
	}
	if diff := diffDigests(want, got); diff != "" {
		return res, fmt.Errorf("verify: the target differs from the source after copying (%s)", diff)
	}
	res.Took = time.Since(start)
	return res, nil
}

// digests returns the SHA-256 of every value in st, by key.
func digests(ctx context.Context, st vault.Store) (map[string][sha256.Size]byte, error) {
	m := map[string][sha256.Size]byte{}
	err := st.Scan(ctx, "", "", func(key string, value []byte, _ uint64) (bool, error) {
		m[key] = sha256.Sum256(value)
		return true, nil
	})
	return m, err
}

// diffDigests says how have differs from want ("" if not at all), with
// counts and at most one key of each kind (keys hold no secrets).
func diffDigests(want, have map[string][sha256.Size]byte) string {
	var missing, changed, extra int
	var ex []string
	note := func(kind, k string, n int) {
		if n == 1 {
			ex = append(ex, fmt.Sprintf("%s %q", kind, k))
		}
	}
	for k, d := range want {
		switch h, ok := have[k]; {
		case !ok:
			missing++
			note("missing", k, missing)
		case h != d:
			changed++
			note("different", k, changed)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			extra++
			note("not in the source", k, extra)
		}
	}
	if missing+changed+extra == 0 {
		return ""
	}
	slices.Sort(ex)
	return fmt.Sprintf("%d of the source's %d records missing, %d different, %d not in the source; e.g. %s",
		missing, len(want), changed, extra, strings.Join(ex, ", "))
}
