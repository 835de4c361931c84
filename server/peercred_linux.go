package server

import (
	"net"

	"golang.org/x/sys/unix"
)

// peerUcred asks the kernel for the credentials of the process at the other
// end of c (SO_PEERCRED: as of connect(2), not forgeable by the peer).
func peerUcred(c *net.UnixConn) (uid, gid uint32, pid int32, ok bool) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, 0, false
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return 0, 0, 0, false
	}
	return cred.Uid, cred.Gid, cred.Pid, true
}
