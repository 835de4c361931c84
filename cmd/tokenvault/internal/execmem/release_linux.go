package execmem

import (
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Release drops the pages of the executable's read-only mappings from the
// process's resident set (see the package comment) and returns how many
// bytes of them were resident. A mapping that cannot be released keeps its
// pages; the process works on either way.
func Release() (int64, error) {
	fi, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("execmem: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("execmem: no device and inode for the executable")
	}
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("execmem: %w", err)
	}
	var released int64
	for _, m := range releasable(parseSmaps(b), unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino) {
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, m.start, m.end-m.start, unix.MADV_DONTNEED); errno != 0 {
			return released, fmt.Errorf("execmem: madvise %#x-%#x: %w", m.start, m.end, errno)
		}
		released += m.rss
	}
	return released, nil
}
