package hugestart

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestAdviceValuesAreLinuxs(t *testing.T) {
	for _, c := range []struct {
		name      string
		ours, sys int
	}{
		{"MADV_HUGEPAGE", madvHugepage, unix.MADV_HUGEPAGE},
		{"MADV_NOHUGEPAGE", madvNoHugepage, unix.MADV_NOHUGEPAGE},
		{"MADV_COLLAPSE", madvCollapse, unix.MADV_COLLAPSE},
	} {
		if c.ours != c.sys {
			t.Errorf("%s = %d here, %d in x/sys/unix", c.name, c.ours, c.sys)
		}
	}
}

func TestDisabled(t *testing.T) {
	for godebug, want := range map[string]bool{
		"":                                 false,
		"disablethp=1":                     true,
		"disablethp=0":                     false,
		"gctrace=1,disablethp=1":           true,
		"disablethp=1,gctrace=1":           true,
		"disablethp=1,disablethp=0":        false, // the last one wins
		"disablethp=0,disablethp=1":        true,
		"gctrace=1,gctrace=1,disablethp=1": true,
		"xdisablethp=1":                    false,
		"disablethp=10":                    false,
		"madvdontneed=1,,disablethp=1,x":   true,
	} {
		if got := disabled(godebug); got != want {
			t.Errorf("disabled(%q) = %v, want %v", godebug, got, want)
		}
	}
}

// vma is what the test reads of the mapping holding an address.
type vma struct {
	flags         []string
	anonHugePages int64 // kB
	found         bool
}

func mappingOf(t *testing.T, addr uintptr) vma {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	var v vma
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(f[0], "-"); ok && !strings.HasSuffix(f[0], ":") {
			l, err1 := strconv.ParseUint(lo, 16, 64)
			h, err2 := strconv.ParseUint(hi, 16, 64)
			in = err1 == nil && err2 == nil && uint64(addr) >= l && uint64(addr) < h
			v.found = v.found || in
			continue
		}
		if !in {
			continue
		}
		switch f[0] {
		case "AnonHugePages:":
			v.anonHugePages, _ = strconv.ParseInt(f[1], 10, 64)
		case "VmFlags:":
			v.flags = f[1:]
		}
	}
	if !v.found {
		t.Fatalf("no mapping holds %#x", addr)
	}
	return v
}

func has(flags []string, f string) bool {
	for _, x := range flags {
		if x == f {
			return true
		}
	}
	return false
}

// The test binary imports the package, so its init ran: the heap chunk it
// found is advised, and the 2 MiB it was filling is one huge page; End
// takes the advice back.
func TestInitAdvisesTheHeapChunkAndEndTakesItBack(t *testing.T) {
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if err != nil || bytes.Contains(mode, []byte("[never]")) {
		t.Skipf("no transparent huge pages here (%q, %v)", mode, err)
	}
	if chunk == 0 {
		t.Fatal("init advised no heap chunk")
	}
	if frontier < chunk || frontier >= chunk+chunkBytes {
		t.Fatalf("frontier %#x is outside the chunk %#x", frontier, chunk)
	}
	v := mappingOf(t, chunk)
	if !has(v.flags, "hg") {
		t.Fatalf("heap chunk %#x: VmFlags %v, want hg (MADV_HUGEPAGE)", chunk, v.flags)
	}
	switch {
	case collapseErr == unix.EINVAL:
		t.Logf("this kernel has no MADV_COLLAPSE: %v", collapseErr)
	case collapseErr != nil:
		t.Logf("MADV_COLLAPSE failed: %v (no huge page free?)", collapseErr)
	case v.anonHugePages < 2048:
		t.Errorf("after MADV_COLLAPSE the chunk's mapping has %d kB of huge pages, want at least 2048", v.anonHugePages)
	}

	End()
	End()
	v = mappingOf(t, chunk)
	if has(v.flags, "hg") || !has(v.flags, "nh") {
		t.Errorf("after End: VmFlags %v, want nh and not hg", v.flags)
	}
}
