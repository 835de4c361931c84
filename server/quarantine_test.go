package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault"
)

// A record damaged in the store while the sidecar serves answers
// DATA_LOSS with reason RECORD_UNREADABLE and its cause, never a bare
// INTERNAL; the other connections are served; the gauge counts it, the
// admin listing shows its key, a credential limited to some providers is
// told nothing of it, and deleting it takes the count back to 0.
func TestServer_UnreadableRecord(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	ids := []string{e.connect("alice"), e.connect("bob"), e.connect("carol")}
	bad := ids[1]
	val, _, err := e.store.Get(ctx, "conn/"+bad)
	if err != nil {
		t.Fatal(err)
	}
	val[len(val)/2] ^= 0x10
	if _, err := e.store.Apply(ctx, vault.Op{Key: "conn/" + bad, Value: val, IfRev: vault.AnyRev}); err != nil {
		t.Fatal(err)
	}

	wantUnreadable := func(what string, err error) {
		t.Helper()
		st, _ := status.FromError(err)
		var cause string
		for _, d := range st.Details() {
			if ei, ok := d.(*errdetails.ErrorInfo); ok {
				cause = ei.Metadata["cause"]
			}
		}
		if st.Code() != codes.DataLoss || reason(err) != reasonRecordUnreadable || cause != "authentication_failed" {
			t.Fatalf("%s = %v (reason %q, cause %q); want DATA_LOSS, RECORD_UNREADABLE, authentication_failed", what, err, reason(err), cause)
		}
		if strings.Contains(st.Message(), "seal") || strings.Contains(st.Message(), "conn/") {
			t.Fatalf("%s tells internals: %q", what, st.Message())
		}
	}
	_, err = e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: bad, ForceRefresh: true})
	wantUnreadable("GetAccessToken(force) of the damaged record", err)
	_, err = e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: bad})
	wantUnreadable("GetConnection(damaged)", err)
	for _, id := range []string{ids[0], ids[2]} {
		if _, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id}); err != nil {
			t.Fatalf("GetConnection(%s), intact = %v", id, err)
		}
		if _, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true}); err != nil {
			t.Fatalf("GetAccessToken(%s, force), intact = %v", id, err)
		}
	}
	if m := scrape(t, e); !strings.Contains(m, "\ntokenvault_records_unreadable 1\n") {
		t.Fatalf("metrics lack tokenvault_records_unreadable 1:\n%s", grepLines(m, "unreadable"))
	}
	list, err := e.admin.ListUnreadableRecords(ctx, &tvv1.ListUnreadableRecordsRequest{})
	if err != nil || list.Total != 1 || len(list.Records) != 1 || list.Records[0].Key != "conn/"+bad ||
		list.Records[0].ConnectionId != bad || list.Records[0].Reason != "authentication_failed" || list.Records[0].SinceTime == nil {
		t.Fatalf("ListUnreadableRecords = %v, %v; want conn/%s", list, err, bad)
	}
	if _, err := tvv1.NewAdminServiceClient(e.dial("ops-other")).ListUnreadableRecords(ctx, &tvv1.ListUnreadableRecordsRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ListUnreadableRecords by a limited operator = %v; want PERMISSION_DENIED", err)
	}
	// A credential limited to some providers cannot learn the record's
	// provider, so it is told nothing of it.
	limited := tvv1.NewTokenVaultServiceClient(e.dial("app-acme"))
	if _, err := limited.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: bad}); status.Code(err) != codes.NotFound || reason(err) != "NOT_CONNECTED" {
		t.Fatalf("GetAccessToken(damaged) by a limited credential = %v; want NOT_FOUND, NOT_CONNECTED", err)
	}
	if _, err := limited.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: ids[0]}); err != nil {
		t.Fatalf("GetAccessToken(intact) by a limited credential = %v", err)
	}
	if _, err := e.api.DeleteConnection(ctx, &tvv1.DeleteConnectionRequest{ConnectionId: bad}); err != nil {
		t.Fatalf("DeleteConnection(damaged) = %v", err)
	}
	if m := scrape(t, e); !strings.Contains(m, "\ntokenvault_records_unreadable 0\n") {
		t.Fatalf("metrics lack tokenvault_records_unreadable 0 after the delete:\n%s", grepLines(m, "unreadable"))
	}
}

const reasonRecordUnreadable = "RECORD_UNREADABLE"
