package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// The key commands over gRPC: RetireKeys answers KEY_TERM_IN_USE while a
// value is under the old term and retires it after; RekeyMaster refuses a
// key that is not one without echoing it, refuses a credential limited to
// some providers, and answers the new key's id; each call is audited, the
// key nowhere in the audit.
func TestServer_KeyCommands(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	id := e.connect("alice")
	stale, _, err := e.store.Get(ctx, "conn/"+id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RotateKeys(ctx, &tvv1.RotateKeysRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Apply(ctx, vault.Op{Key: "conn/" + id, Value: stale, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.RetireKeys(ctx, &tvv1.RetireKeysRequest{})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "KEY_TERM_IN_USE" {
		t.Fatalf("RetireKeys with a value under term 1 = %v; want FAILED_PRECONDITION, KEY_TERM_IN_USE", err)
	}
	if _, err := e.admin.RotateKeys(ctx, &tvv1.RotateKeysRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := e.admin.RetireKeys(ctx, &tvv1.RetireKeysRequest{})
	if err != nil || resp.Term != 3 || len(resp.RetiredTerms) != 2 {
		t.Fatalf("RetireKeys after the re-wrap = %v, %v; want term 3, terms 1 and 2 retired", resp, err)
	}

	notAKey := "0123456789abcdef0123456789abcdef" // 32 characters of text
	_, err = e.admin.RekeyMaster(ctx, &tvv1.RekeyMasterRequest{NewMasterKey: []byte(notAKey)})
	if status.Code(err) != codes.InvalidArgument || strings.Contains(err.Error(), notAKey) {
		t.Fatalf("RekeyMaster(text) = %v; want INVALID_ARGUMENT without the input", err)
	}
	mk, _ := seal.GenerateMasterKey()
	limited := tvv1.NewAdminServiceClient(e.dial("ops-other"))
	if _, err := limited.RekeyMaster(ctx, &tvv1.RekeyMasterRequest{NewMasterKey: []byte(mk.Encode())}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("RekeyMaster by a limited operator = %v; want PERMISSION_DENIED", err)
	}
	rk, err := e.admin.RekeyMaster(ctx, &tvv1.RekeyMasterRequest{NewMasterKey: []byte(mk.Encode())})
	if err != nil || rk.MasterKeyId != mk.ID() {
		t.Fatalf("RekeyMaster = %v, %v; want id %s", rk, err, mk.ID())
	}
	if _, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}); err != nil {
		t.Fatalf("GetAccessToken after the rekey = %v", err)
	}
	if err := e.audit.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for method, want := range map[string]int{
		tvv1.AdminService_RekeyMaster_FullMethodName: 3, // refused, denied, done
		tvv1.AdminService_RetireKeys_FullMethodName:  2,
	} {
		l, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Method: method})
		if err != nil || len(l.Events) != want {
			t.Fatalf("ListAuditEvents(%s) = %v, %v; want %d records", method, l, err, want)
		}
		for _, ev := range l.Events {
			if s := ev.String(); strings.Contains(s, mk.Encode()) || strings.Contains(s, notAKey) {
				t.Fatalf("an audit record holds the key: %s", s)
			}
		}
	}
}
