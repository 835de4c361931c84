package etcd_test

import (
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/etcd"
	"github.com/tokenvault/tokenvault/vault/etcd/etcdtest"
)

// Audit records written by two replicas, at the very same instant, are
// all listed by a third: chunk keys carry each process's instance, so
// replicas never overwrite each other's chunks.
func TestReplicas_AuditFromAnyReplica(t *testing.T) {
	c := etcdtest.Start(t, 1)
	at := time.Date(2026, 12, 5, 7, 0, 0, 0, time.UTC)
	logs := make([]*audit.Log, 3)
	for i := range logs {
		st := openStore(t, etcd.Options{Endpoints: c.Endpoints(), Prefix: "audit-replicas/"})
		logs[i] = audit.New(audit.Config{Store: st, Now: func() time.Time { return at }})
		t.Cleanup(logs[i].Close)
	}
	want := map[string]bool{}
	for i, caller := range []string{"replica-a", "replica-b"} {
		for k := range 3 {
			logs[i].Record(audit.Record{Caller: caller, Method: "/tokenvault.v1.TokenVaultService/GetAccessToken", ConnectionID: "conn_x", Outcome: "OK", Reason: string(rune('a' + k))})
			want[caller+string(rune('a'+k))] = true
		}
		if err := logs[i].Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	recs, next, err := logs[2].List(t.Context(), audit.Filter{}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range recs {
		got[r.Caller+r.Reason] = true
	}
	if len(recs) != len(want) || len(got) != len(want) || next != "" {
		t.Errorf("replica C lists %d records (%v), next %q; want the %d of replicas A and B", len(recs), got, next, len(want))
	}
}
