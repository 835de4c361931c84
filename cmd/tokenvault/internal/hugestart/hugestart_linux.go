package hugestart

// Only syscall and unsafe: the fewer packages it imports, the earlier its
// init runs, and the less heap the start has touched by then.
import (
	"syscall"
	"unsafe"
)

const (
	// chunkBytes is the Go runtime's unit of heap growth (pallocChunkBytes):
	// the heap is mapped read-write 4 MiB at a time, at 4 MiB alignment.
	chunkBytes = 4 << 20
	hugeBytes  = 2 << 20

	// The madvise advice values of Linux's uapi (golang.org/x/sys/unix
	// has them too; the test checks they agree).
	madvHugepage   = 14
	madvNoHugepage = 15
	madvCollapse   = 25
)

var (
	// chunk is the start of the heap chunk init advised; zero if it did
	// not (turned off, or the kernel refused).
	chunk uintptr
	// frontier is where the heap was allocating when init ran.
	frontier uintptr
	// collapseErr is what MADV_COLLAPSE returned (nil on success).
	collapseErr error
)

// sink keeps init's probe allocation on the heap.
var sink *[64]byte

func init() {
	if godebug, _ := syscall.Getenv("GODEBUG"); disabled(godebug) {
		return
	}
	sink = new([64]byte)
	frontier = uintptr(unsafe.Pointer(sink))
	c := frontier &^ (chunkBytes - 1)
	if madvise(c, chunkBytes, madvHugepage) != nil {
		return
	}
	chunk = c
	// The 2 MiB being filled has 4 KiB pages already, and the kernel
	// gives a huge page on fault only to an empty 2 MiB: fold it now.
	collapseErr = madvise(frontier&^(hugeBytes-1), hugeBytes, madvCollapse)
}

// disabled reports whether godebug (GODEBUG's value) sets disablethp=1;
// the last setting of a name wins, as in the runtime.
func disabled(godebug string) bool {
	const name = "disablethp="
	off := false
	for godebug != "" {
		kv := godebug
		godebug = ""
		for i := 0; i < len(kv); i++ {
			if kv[i] == ',' {
				kv, godebug = kv[:i], kv[i+1:]
				break
			}
		}
		if len(kv) > len(name) && kv[:len(name)] == name {
			off = kv[len(name):] == "1"
		}
	}
	return off
}

// End asks for no more huge pages on the chunk init advised. Safe to call
// more than once, and when init advised nothing.
func End() {
	if chunk != 0 {
		_ = madvise(chunk, chunkBytes, madvNoHugepage)
	}
}

func madvise(addr, n uintptr, advice int) error {
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, addr, n, uintptr(advice)); errno != 0 {
		return errno
	}
	return nil
}
