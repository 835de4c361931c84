package etcd_test

import (
	"fmt"
	"testing"

	"github.com/tokenvault/tokenvault/vault/etcd"
)

// Rendezvous hashing spreads names evenly over members, and a member that
// leaves moves only its own names: every other name keeps its owner.
func TestOwner_SpreadAndStable(t *testing.T) {
	members := []string{"a1b2c3d4e5f60718", "0011223344556677", "f0e1d2c3b4a59687"}
	const n = 30000
	count := map[string]int{}
	for i := range n {
		name := fmt.Sprintf("conn_%08d", i)
		o := etcd.Owner(members, name)
		count[o]++
		after := etcd.Owner(members[:2], name)
		if o != members[2] && after != o {
			t.Fatalf("%s moved from %s to %s when another member left", name, o, after)
		}
	}
	for _, m := range members {
		if c := count[m]; c < n/3*9/10 || c > n/3*11/10 {
			t.Errorf("member %s owns %d of %d names; want about a third", m, c, n)
		}
	}
	if etcd.Owner(nil, "x") != "" {
		t.Error("Owner of no members is not empty")
	}
}
