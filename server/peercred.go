package server

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// PeerCredentials returns the server's transport credentials: plaintext,
// like insecure.NewCredentials, except that on a unix-socket connection it
// asks the kernel who the connecting process is (SO_PEERCRED) and puts its
// uid in the connection's PeerAuthInfo, which authentication trusts for the
// peers listed in NewAuth. TCP connections carry no uid.
func PeerCredentials() credentials.TransportCredentials { return peerCreds{} }

// PeerAuthInfo is the AuthInfo of a connection served with
// PeerCredentials. HasCred is true only on a unix socket whose peer the
// kernel named.
type PeerAuthInfo struct {
	credentials.CommonAuthInfo
	HasCred  bool
	UID, GID uint32
	PID      int32
}

// AuthType implements credentials.AuthInfo.
func (PeerAuthInfo) AuthType() string { return "peercred" }

type peerCreds struct{}

func (peerCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := PeerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
	if uc, ok := netConn(conn).(*net.UnixConn); ok {
		if uid, gid, pid, ok := peerUcred(uc); ok {
			info.HasCred, info.UID, info.GID, info.PID = true, uid, gid, pid
			// The kernel vouches for the peer and nothing leaves the host.
			info.SecurityLevel = credentials.PrivacyAndIntegrity
		}
	}
	return conn, info, nil
}

func (peerCreds) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, PeerAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }

func (peerCreds) OverrideServerName(string) error { return nil }
