package bolt

import "golang.org/x/sys/unix"

// releaseMapping drops the pages of [addr, addr+size) from the process's
// resident set; the mapping stays, and a later access faults the page in
// again from the page cache. Failure is harmless (the pages stay), so it is
// ignored.
func releaseMapping(addr, size uintptr) {
	if size == 0 {
		return
	}
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, addr, size, unix.MADV_DONTNEED)
}
