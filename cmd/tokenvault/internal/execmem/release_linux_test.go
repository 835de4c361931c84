package execmem

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"text/template"
)

// rssFile is the process's file-backed resident memory, in bytes.
func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "RssFile:" {
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// work runs code from many packages of the binary.
func work(t *testing.T) {
	t.Helper()
	re := regexp.MustCompile(`^([a-z]+)-(\d+)$`)
	if m := re.FindStringSubmatch("conn-42"); len(m) != 3 || m[2] != "42" {
		t.Fatalf("regexp: %q", m)
	}
	var buf bytes.Buffer
	if err := template.Must(template.New("").Parse(`{{range .}}{{.}},{{end}}`)).Execute(&buf, []int{1, 2, 3}); err != nil || buf.String() != "1,2,3," {
		t.Fatalf("template: %q, %v", buf.String(), err)
	}
}

// TestRelease: the executable's read-only pages leave the resident set,
// and the process runs on (its code and data are read again from the
// page cache).
func TestRelease(t *testing.T) {
	work(t)
	fi, err := os.Stat("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	before := rssFile(t)
	released, err := Release()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	t.Logf("executable %d KiB; RssFile %d KiB -> %d KiB; released %d KiB", fi.Size()>>10, before>>10, after>>10, released>>10)
	if released <= 0 {
		t.Fatalf("released %d bytes; want the resident code and read-only data", released)
	}
	// What the read and the calls below map again is far less than what
	// was released.
	if after > before-released/2 {
		t.Errorf("RssFile %d KiB -> %d KiB, with %d KiB released", before>>10, after>>10, released>>10)
	}
	work(t)
	if _, err := Release(); err != nil {
		t.Fatal(err)
	}
	work(t)
}
