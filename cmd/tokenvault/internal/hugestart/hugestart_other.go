//go:build !linux

package hugestart

// End does nothing but on Linux, the only kernel the package asks for huge
// pages.
func End() {}
