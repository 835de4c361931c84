package bolt_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// mappedKiB returns the resident size of this process's mapping of path,
// from /proc/self/smaps.
func mappedKiB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	total, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fields := strings.Fields(line); len(fields) >= 6 && strings.Contains(fields[0], "-") {
			in = fields[len(fields)-1] == path
			continue
		}
		if in && strings.HasPrefix(line, "Rss:") {
			n, err := strconv.Atoi(strings.Fields(line)[1])
			if err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			total += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// A full scan of a file much larger than releaseBytes leaves little of the
// file resident, and every value read back is intact.
func TestScan_ReleasesMapping(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "vault.db")
	s := openStore(t, path, bolt.Options{NoSync: true})
	const n, size = 40000, 1024 // 40 MB of values
	val := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	for i := 0; i < n; i += 1000 {
		var ops []vault.Op
		for j := i; j < i+1000; j++ {
			ops = append(ops, vault.Op{Key: fmt.Sprintf("conn/%08d", j), Value: val(j), IfRev: -1})
		}
		if _, err := s.Apply(ctx, ops...); err != nil {
			t.Fatal(err)
		}
	}
	before := mappedKiB(t, path) // what the writes left (about 2 MiB here)
	got := 0
	err := s.Scan(ctx, "conn/", "", func(key string, value []byte, rev uint64) (bool, error) {
		if !bytes.Equal(value, val(got)) {
			return false, fmt.Errorf("%s: value changed", key)
		}
		got++
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got != n {
		t.Fatalf("scanned %d keys, want %d", got, n)
	}
	// Without the release the scan leaves all of the values' 40 MB
	// resident; with it, no more than before the scan. Releasing only
	// every releaseBytes left the tail read since the last release (here
	// 1.8 MiB more; with the kernel's fault-around, up to 16 times what
	// was read).
	if kib := mappedKiB(t, path); kib > before+256 {
		t.Errorf("after the scan %d KiB of the file are resident (%d before it), want at most 256 KiB more", kib, before)
	}
	// Reads after a release fault the pages back in intact.
	for _, i := range []int{0, n / 2, n - 1} {
		v, _, err := s.Get(ctx, fmt.Sprintf("conn/%08d", i))
		if err != nil || !bytes.Equal(v, val(i)) {
			t.Fatalf("Get %d after release: err %v, value intact %v", i, err, bytes.Equal(v, val(i)))
		}
	}
}
