package vault_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImportGraph keeps the architecture true: cmd -> server -> {vault,
// providers}; vault and providers never reach gRPC or each other; vault
// knows no OAuth library and of the protos only its storage record; client
// reaches only the proto and its own packages.
//
// Under vault/: seal and internal/retry are leaves (nothing of the project);
// vault imports seal and neither audit nor webhook, which build on vault;
// nothing under vault/ reaches gRPC or net/http except webhook (it speaks
// HTTP to receivers) and the etcd Store (etcd's client is gRPC).
func TestImportGraph(t *testing.T) {
	const mod = "github.com/tokenvault/tokenvault/"
	const (
		grpc = "google.golang.org/grpc"
		http = "net/http"
	)
	for _, tc := range []struct {
		pkg       string
		forbidden []string
		required  []string // direct or indirect
		leaf      bool     // imports no package of the project
	}{
		{pkg: "vault", forbidden: []string{grpc, http, "go.etcd.io", "golang.org/x/oauth2", mod + "providers", mod + "server", mod + "proto/tokenvault/v1", mod + "vault/audit", mod + "vault/webhook", mod + "vault/bolt", mod + "vault/etcd"}, required: []string{mod + "vault/seal"}},
		{pkg: "vault/seal", forbidden: []string{grpc, http}, leaf: true},
		{pkg: "internal/retry", forbidden: []string{grpc, http}, leaf: true},
		{pkg: "vault/audit", forbidden: []string{grpc, http, mod + "vault/webhook", mod + "server", mod + "providers"}, required: []string{mod + "vault"}},
		{pkg: "vault/webhook", forbidden: []string{grpc, mod + "vault/audit", mod + "server", mod + "providers", mod + "proto/tokenvault/v1"}, required: []string{mod + "vault"}},
		{pkg: "vault/bolt", forbidden: []string{grpc, http, mod + "providers", mod + "server"}},
		{pkg: "vault/storetest", forbidden: []string{grpc, http, mod + "providers", mod + "server"}},
		// etcd's client is gRPC itself; the store still knows no provider,
		// server or bbolt (etcd's server, for tests only, is etcdtest's).
		{pkg: "vault/etcd", forbidden: []string{"go.etcd.io/bbolt", "go.etcd.io/etcd/server", mod + "providers", mod + "server", mod + "vault/bolt"}},
		{pkg: "providers", forbidden: []string{grpc, "go.etcd.io/bbolt", mod + "vault", mod + "server", mod + "proto"}},
		{pkg: "providers/providertest", forbidden: []string{grpc, "go.etcd.io/bbolt", mod + "vault", mod + "server", "testing"}},
		{pkg: "client", forbidden: []string{mod + "server", mod + "vault", mod + "providers", mod + "internal", "go.etcd.io/bbolt"}},
		{pkg: "server", forbidden: []string{mod + "cmd", mod + "vault/bolt", mod + "vault/etcd"}},
		// The Kubernetes injector (tokenvault inject) writes its few
		// admission and pod fields by hand: the sidecar's binary links no
		// Kubernetes library (the deploy module's tests use them).
		{pkg: "cmd/tokenvault/internal/inject", forbidden: []string{"k8s.io", "sigs.k8s.io", grpc}, leaf: true},
		{pkg: "cmd/tokenvault", forbidden: []string{"k8s.io", "sigs.k8s.io"}},
	} {
		out, err := exec.Command("go", "list", "-deps", mod+tc.pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", tc.pkg, err, out)
		}
		deps := strings.Fields(string(out))
		for _, dep := range deps {
			if dep == mod+tc.pkg {
				continue
			}
			if tc.leaf && strings.HasPrefix(dep, mod) {
				t.Errorf("%s imports %s (it is a leaf: nothing of the project)", tc.pkg, dep)
			}
			for _, f := range tc.forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s imports %s (forbidden: %s)", tc.pkg, dep, f)
				}
			}
		}
		for _, r := range tc.required {
			if !slices.Contains(deps, r) {
				t.Errorf("%s does not import %s", tc.pkg, r)
			}
		}
	}
}
