//go:build !linux

package server

import "net"

// peerUcred is Linux-only (SO_PEERCRED); elsewhere unix-socket peers carry
// no uid and must present an API key.
func peerUcred(*net.UnixConn) (uid, gid uint32, pid int32, ok bool) {
	return 0, 0, 0, false
}
