package deploy

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

const chart = "helm/tokenvault"

// helmBin is the pinned helm that `make deploy-test` installs into .bin/
// (or $TOKENVAULT_HELM).
func helmBin(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("TOKENVAULT_HELM"), filepath.Join("..", ".bin", "helm")} {
		if p == "" {
			continue
		}
		if abs, err := filepath.Abs(p); err == nil {
			if _, err := os.Stat(abs); err == nil {
				return abs
			}
		}
	}
	t.Fatal("helm not found at ../.bin/helm or $TOKENVAULT_HELM: run 'make deploy-test', which installs the pinned one")
	return ""
}

func helm(t *testing.T, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helmBin(t), args...)
	// No user config, cache or repositories: the chart is rendered offline.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	return cmd.CombinedOutput()
}

// The chart lints and renders, for each values set, the objects the
// kustomize overlays render, and they hold the same invariants.
func TestHelm_Chart(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []string
		many   bool
	}{
		{"defaults", nil, false},
		{"providers", []string{"helm/testdata/providers.yaml"}, false},
		{"many", []string{"helm/testdata/many.yaml"}, true},
		{"many+providers", []string{"helm/testdata/many.yaml", "helm/testdata/providers.yaml"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var vf []string
			for _, v := range tc.values {
				vf = append(vf, "-f", v)
			}
			if out, err := helm(t, append([]string{"lint", "--strict", chart}, vf...)...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			out, err := helm(t, append([]string{"template", "rel", chart}, vf...)...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			r := decodeAll(t, out)
			checkInvariants(t, r)
			if len(r.deployments) != 1 || len(r.configMaps) != 1 {
				t.Fatalf("%d Deployments, %d ConfigMaps; want 1 and 1", len(r.deployments), len(r.configMaps))
			}
			d := r.deployments[0]
			var cfg map[string]any
			if err := yaml.Unmarshal([]byte(r.configMaps[0].Data["tokenvault.yaml"]), &cfg); err != nil {
				t.Fatalf("the sidecar's config is not YAML: %v", err)
			}
			if cfg["grpc_addr"] != "127.0.0.1:7070" || cfg["master_key_file"] != "/etc/tokenvault/secrets/master-key" {
				t.Errorf("config: grpc_addr %v, master_key_file %v", cfg["grpc_addr"], cfg["master_key_file"])
			}
			if tc.many {
				if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 || len(r.pdbs) != 1 || len(r.pvcs) != 0 {
					t.Errorf("many: replicas %v, %d PDBs, %d PVCs; want several, 1, 0", d.Spec.Replicas, len(r.pdbs), len(r.pvcs))
				}
				if st, _ := cfg["store"].(map[string]any); st["kind"] != "etcd" {
					t.Errorf("many: store %v; want etcd", cfg["store"])
				}
			} else {
				if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType || len(r.pvcs) != 1 || !usesClaim(d, r.pvcs[0].Name) {
					t.Errorf("single: want 1 replica, Recreate, data on the PVC")
				}
				if len(r.pdbs) != 0 {
					t.Error("single: a PodDisruptionBudget for one replica blocks every drain")
				}
			}
			if strings.Contains(tc.name, "providers") {
				provs, _ := cfg["providers"].(map[string]any)
				if len(provs) != 2 {
					t.Errorf("config providers = %v; want acme and github", cfg["providers"])
				}
				if got := sidecar(d).Resources.Limits.Memory().String(); got != "128Mi" || !gomemlimitFits(sidecar(d), 128<<20) {
					t.Errorf("resources from values: limit %s; want 128Mi and GOMEMLIMIT from it", got)
				}
			}
		})
	}
}

// Values the schema refuses never render: many replicas without etcd, and
// a provider's client secret given as a value.
func TestHelm_SchemaRefuses(t *testing.T) {
	for file, want := range map[string]string{
		"helm/testdata/bad-many-no-etcd.yaml":   "endpoints",
		"helm/testdata/bad-secret-literal.yaml": "providers",
	} {
		out, err := helm(t, "template", "rel", chart, "-f", file)
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("helm template -f %s = %v\n%s\nwant a schema error naming %s", file, err, out, want)
		}
	}
}
