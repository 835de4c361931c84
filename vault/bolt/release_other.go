//go:build !linux

package bolt

// releaseMapping does nothing where the kernel's behaviour for a shared
// file mapping's MADV_DONTNEED is not the one release_linux.go relies on.
func releaseMapping(addr, size uintptr) {}
