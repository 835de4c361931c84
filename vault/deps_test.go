package vault_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportGraph keeps the architecture true: cmd -> server -> {vault,
// providers}; vault and providers never reach gRPC or each other; vault
// knows no OAuth library and of the protos only its storage record; client
// reaches only the proto.
func TestImportGraph(t *testing.T) {
	const mod = "github.com/tokenvault/tokenvault/"
	for _, tc := range []struct {
		pkg       string
		forbidden []string
	}{
		{"vault", []string{"google.golang.org/grpc", "go.etcd.io/bbolt", "golang.org/x/oauth2", mod + "providers", mod + "server", mod + "proto/tokenvault/v1"}},
		{"vault/bolt", []string{"google.golang.org/grpc", mod + "providers", mod + "server"}},
		{"providers", []string{"google.golang.org/grpc", "go.etcd.io/bbolt", mod + "vault", mod + "server", mod + "proto"}},
		{"providers/providertest", []string{"google.golang.org/grpc", "go.etcd.io/bbolt", mod + "vault", mod + "server", "testing"}},
		{"client", []string{mod + "server", mod + "vault", mod + "providers", "go.etcd.io/bbolt"}},
		{"server", []string{mod + "cmd", mod + "vault/bolt"}},
	} {
		out, err := exec.Command("go", "list", "-deps", mod+tc.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", tc.pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range tc.forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s imports %s (forbidden: %s)", tc.pkg, dep, f)
				}
			}
		}
	}
}
