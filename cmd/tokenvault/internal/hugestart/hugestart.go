// Package hugestart backs the heap that a start touches with transparent
// huge pages, and stops asking for them once the start is over.
//
// A start touches some 2.5 MiB of heap, one 4 KiB page at a time: about
// 600 page faults, the largest share of a start's faults. On the virtual
// machines the sidecar is measured on, a fault costs 10–20 µs (a guest
// fault exits to the hypervisor), so those faults cost as much as the
// start's own work. Imported for its init, which runs before most of the
// program's packages initialise, the package asks the kernel for huge pages
// (madvise MADV_HUGEPAGE) on the 4 MiB heap chunk the Go runtime is
// allocating from, and folds the 2 MiB the runtime is filling into one
// huge page at once (MADV_COLLAPSE). The rest of the start's heap in that
// chunk then arrives 2 MiB per fault. Where the kernel has no transparent
// huge pages, or says never, or is older than MADV_COLLAPSE (Linux 6.1),
// the calls fail and nothing changes.
//
// End asks for no more huge pages on that chunk (MADV_NOHUGEPAGE). It
// matters for memory, not speed: once the chunk is mostly free again, the
// kernel's khugepaged would otherwise fold any 2 MiB of it that holds one
// live page into a whole resident huge page, the resident-set growth that
// made the Go runtime give up asking for huge pages itself (Go 1.21.1). The
// huge pages already made stay until the runtime returns their free pages
// (debug.FreeOSMemory splits them).
//
// GODEBUG=disablethp=1, the Go runtime's own switch for huge pages on its
// heap, turns the package off.
package hugestart
