// Command floor is the start floor of tokenvault-bench -probe: a bare
// grpc-go server (grpc.NewServer() with no options) that serves only the
// standard gRPC health service, SERVING, on the address it is given. What
// it takes from exec to its first health check is what any gRPC server in
// Go takes on the machine, and the probe reports the sidecar's start as a
// ratio to it, measured in the same run.
//
//	floor -addr 127.0.0.1:PORT
package main

import (
	"flag"
	"fmt"
	"net"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	flag.Parse()
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}
