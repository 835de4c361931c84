package execmem

import (
	"testing"
)

// A dev-mode sidecar's /proc/self/smaps, cut down: the executable's code,
// read-only data and data, its bss, the heap, and a read-only mapping of
// another file.
const smaps = `00400000-00c5c000 r-xp 00000000 fe:00 10028017                           /srv/tokenvault
Size:               8560 kB
Rss:                7812 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd 
00c5c000-0165a000 r--p 0085c000 fe:00 10028017                           /srv/tokenvault
Size:              10232 kB
Rss:                9868 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd 
0165a000-016db000 rw-p 0125a000 fe:00 10028017                           /srv/tokenvault
Size:                516 kB
Rss:                 332 kB
Anonymous:           120 kB
VmFlags: rd wr mr mw me dw ac sd 
016db000-03722000 rw-p 00000000 00:00 0 
Size:              33052 kB
Rss:                 208 kB
Anonymous:           208 kB
c000000000-c000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                3120 kB
Anonymous:          3120 kB
7f0000000000-7f0000100000 r--p 00000000 fe:00 777                        /srv/data/tokenvault.db
Size:               1024 kB
Rss:                  64 kB
Anonymous:             0 kB
`

func TestParseSmaps(t *testing.T) {
	ms := parseSmaps([]byte(smaps))
	if len(ms) != 6 {
		t.Fatalf("parsed %d mappings, want 6: %+v", len(ms), ms)
	}
	code := ms[0]
	if code.start != 0x400000 || code.end != 0xc5c000 || code.perms != "r-xp" || code.major != 0xfe || code.minor != 0 ||
		code.inode != 10028017 || code.rss != 7812<<10 || code.anon != 0 || !code.anonKnown {
		t.Errorf("code mapping = %+v", code)
	}
	if ms[2].anon != 120<<10 {
		t.Errorf("data mapping's Anonymous = %d, want %d", ms[2].anon, 120<<10)
	}
}

func TestReleasable(t *testing.T) {
	ms := parseSmaps([]byte(smaps))
	got := releasable(ms, 0xfe, 0, 10028017)
	if len(got) != 2 || got[0].perms != "r-xp" || got[1].perms != "r--p" || got[0].start != 0x400000 || got[1].start != 0xc5c000 {
		t.Fatalf("releasable = %+v; want the executable's code and read-only data only", got)
	}

	// The writable data mapping is never released, even before it holds
	// a page of its own.
	ms[2].anon = 0
	if got := releasable(ms, 0xfe, 0, 10028017); len(got) != 2 {
		t.Errorf("with the data mapping unwritten: releasable = %+v; want the code and read-only data only", got)
	}

	// A read-only mapping holding pages of its own (written, then made
	// read-only: a relocated section) keeps them; so does one smaps says
	// nothing of.
	ms[1].anon = 4 << 10
	if got := releasable(ms, 0xfe, 0, 10028017); len(got) != 1 || got[0].perms != "r-xp" {
		t.Errorf("with copy-on-write pages in the read-only data: releasable = %+v; want the code only", got)
	}
	ms[0].anonKnown = false
	if got := releasable(ms, 0xfe, 0, 10028017); len(got) != 0 {
		t.Errorf("releasable = %+v; want nothing", got)
	}

	// Another file, or no file, is never the executable.
	if got := releasable(parseSmaps([]byte(smaps)), 0xfe, 1, 10028017); len(got) != 0 {
		t.Errorf("on another device: releasable = %+v", got)
	}
	if got := releasable(parseSmaps([]byte(smaps)), 0, 0, 0); len(got) != 0 {
		t.Errorf("for inode 0: releasable = %+v", got)
	}
}

// A header that does not parse keeps its field lines to itself.
func TestParseSmaps_BadHeader(t *testing.T) {
	ms := parseSmaps([]byte(`00400000-00c5c000 r-xp 00000000 fe:00 10028017   /srv/tokenvault
Rss:                7812 kB
Anonymous:             0 kB
zz-00c5c000 r--p 0085c000 fe:00 10028017   /srv/tokenvault
Rss:                9868 kB
Anonymous:           512 kB
`))
	if len(ms) != 2 || ms[0].rss != 7812<<10 || ms[0].anon != 0 || ms[1].inode != 0 {
		t.Fatalf("parsed %+v", ms)
	}
	if got := releasable(ms, 0xfe, 0, 10028017); len(got) != 1 || got[0].start != 0x400000 {
		t.Errorf("releasable = %+v", got)
	}
}
