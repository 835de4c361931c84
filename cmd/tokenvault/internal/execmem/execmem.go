// Package execmem hands the executable's read-only pages back to the kernel
// once the sidecar has started.
//
// The kernel maps a file's pages into a process on first touch, and up to
// 16 neighbours with each (fault-around): by the time a start is over, most
// of the binary's code and read-only data (its pclntab, type data, the
// protobuf descriptors) is in the resident set, some 17 MiB of a dev-mode
// sidecar's 23, though little of it is ever touched again. Release drops
// those pages from the resident set with madvise(MADV_DONTNEED): they stay
// in the page cache, and a later touch maps one again with a minor fault,
// no disk read. Only read-only private mappings of the executable file
// that hold no page of their own (no copy-on-write page, "Anonymous: 0 kB"
// in /proc/self/smaps) are released: for those, dropping a page loses
// nothing. The writable data mapping never is.
package execmem

import (
	"bufio"
	"bytes"
	"errors"
	"strconv"
	"strings"
)

// mapping is one mapping of /proc/self/smaps, with what Release decides by.
type mapping struct {
	start, end   uintptr
	perms        string
	major, minor uint32
	inode        uint64
	rss, anon    int64 // bytes
	anonKnown    bool  // an "Anonymous:" line was read
}

// parseSmaps reads the mappings of a /proc/PID/smaps text.
func parseSmaps(b []byte) []mapping {
	var ms []mapping
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if strings.HasSuffix(f[0], ":") { // "Rss:   1234 kB"
			if len(ms) == 0 || len(f) < 2 {
				continue
			}
			n, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				continue
			}
			switch f[0] {
			case "Rss:":
				ms[len(ms)-1].rss = n << 10
			case "Anonymous:":
				ms[len(ms)-1].anon, ms[len(ms)-1].anonKnown = n<<10, true
			}
			continue
		}
		// "start-end perms offset major:minor inode [path]". One that does
		// not parse is kept as a mapping of no file (never released), so
		// that its field lines are not taken for the previous one's.
		ms = append(ms, parseHeader(f))
	}
	return ms
}

// parseHeader parses the fields of a mapping's first line; a mapping
// of no file (inode 0) if they do not parse.
func parseHeader(f []string) mapping {
	if len(f) < 5 || len(f[1]) != 4 {
		return mapping{perms: "----"}
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	maj, mnr, ok2 := strings.Cut(f[3], ":")
	if !ok || !ok2 {
		return mapping{perms: "----"}
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	major, err3 := strconv.ParseUint(maj, 16, 32)
	minor, err4 := strconv.ParseUint(mnr, 16, 32)
	inode, err5 := strconv.ParseUint(f[4], 10, 64)
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil || end <= start {
		return mapping{perms: "----"}
	}
	return mapping{start: uintptr(start), end: uintptr(end), perms: f[1], major: uint32(major), minor: uint32(minor), inode: inode}
}

// releasable returns the mappings of the file (major, minor, inode) that
// Release may drop: private, not writable, and holding no page of their
// own (as smaps says: a mapping it says nothing of keeps its pages).
// Anything else, above all the writable data mapping and a read-only
// one that was written before it was made read-only (a relocated section),
// keeps its pages.
func releasable(ms []mapping, major, minor uint32, inode uint64) []mapping {
	var out []mapping
	for _, m := range ms {
		if m.major != major || m.minor != minor || m.inode != inode || inode == 0 {
			continue
		}
		if m.perms[0] != 'r' || m.perms[1] != '-' || m.perms[3] != 'p' {
			continue
		}
		if m.anon != 0 || !m.anonKnown {
			continue
		}
		out = append(out, m)
	}
	return out
}
