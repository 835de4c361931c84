package server_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

func importedAcme(owner, token string) *tvv1.ImportedConnection {
	return &tvv1.ImportedConnection{
		Owner: owner, Provider: "acme", Account: "acct-" + owner,
		AppMetadata: map[string]string{"crm_id": "c-" + owner},
		Credentials: []*tvv1.ImportedCredential{{
			AccessToken: token, RefreshToken: "rt-" + token,
			ExpireTime: timestamppb.New(time.Now().Add(time.Hour)), Scopes: []string{"read"},
		}},
	}
}

func TestLifecycle_ImportUpdateDelete(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	events := e.watch(ctx, "app", &tvv1.WatchEventsRequest{Types: []string{"connection.created", "connection.deleted"}})

	req := &tvv1.ImportConnectionsRequest{Connections: []*tvv1.ImportedConnection{
		importedAcme("alice", "secret-at-alice"),
		importedAcme("bob", "secret-at-bob"),
		{Owner: "carol", Provider: "acme"}, // no credentials
	}}
	// Only operators import.
	if _, err := tvv1.NewAdminServiceClient(e.dial("app")).ImportConnections(ctx, req); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("ImportConnections(app) = %v; want PermissionDenied", err)
	}
	resp, err := e.admin.ImportConnections(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Results
	if len(r) != 3 || r[0].Outcome != tvv1.ImportOutcome_IMPORT_OUTCOME_IMPORTED || r[1].Outcome != tvv1.ImportOutcome_IMPORT_OUTCOME_IMPORTED ||
		r[2].Outcome != tvv1.ImportOutcome_IMPORT_OUTCOME_REFUSED || !strings.Contains(r[2].Reason, "credentials") {
		t.Fatalf("ImportConnections = %v", resp)
	}
	alice, bob := r[0].ConnectionId, r[1].ConnectionId

	// The application reads the imported token and sees the inventory.
	tok, err := app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: alice})
	if err != nil || tok.AccessToken != "secret-at-alice" {
		t.Fatalf("GetAccessToken(imported) = %v, %v", tok, err)
	}
	got, err := app.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: alice})
	if err != nil || !got.Connection.Imported || got.Connection.CreatedBy != "ops" || got.Connection.AppMetadata["crm_id"] != "c-alice" {
		t.Fatalf("GetConnection(imported) = %v, %v", got, err)
	}
	// Application metadata: changed by the application, filterable.
	up, err := app.UpdateConnection(ctx, &tvv1.UpdateConnectionRequest{ConnectionId: bob, SetAppMetadata: map[string]string{"crm_id": "c-vip"}})
	if err != nil || up.Connection.AppMetadata["crm_id"] != "c-vip" {
		t.Fatalf("UpdateConnection = %v, %v", up, err)
	}
	if _, err := app.UpdateConnection(ctx, &tvv1.UpdateConnectionRequest{ConnectionId: bob, SetAppMetadata: map[string]string{"bad key": "x"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("UpdateConnection(bad key) = %v; want InvalidArgument", err)
	}
	list, err := app.ListConnections(ctx, &tvv1.ListConnectionsRequest{AppMetadata: map[string]string{"crm_id": "c-vip"}})
	if err != nil || len(list.Connections) != 1 || list.Connections[0].ConnectionId != bob {
		t.Errorf("ListConnections(crm_id=c-vip) = %v, %v; want bob's only", list, err)
	}

	// Erasure: operators only; the provider is asked to revoke.
	if _, err := app.DeleteConnection(ctx, &tvv1.DeleteConnectionRequest{ConnectionId: alice}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DeleteConnection(app) = %v; want PermissionDenied", err)
	}
	if _, err := e.api.DeleteConnection(ctx, &tvv1.DeleteConnectionRequest{ConnectionId: alice, Reason: "gdpr"}); err != nil {
		t.Fatalf("DeleteConnection = %v", err)
	}
	if _, err := app.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: alice}); status.Code(err) != codes.NotFound || reason(err) != "NOT_CONNECTED" {
		t.Errorf("GetConnection(deleted) = %v; want NotFound/NOT_CONNECTED", err)
	}
	del, err := e.api.DeleteOwner(ctx, &tvv1.DeleteOwnerRequest{Owner: "bob"})
	if err != nil || len(del.ConnectionIds) != 1 || del.ConnectionIds[0] != bob {
		t.Fatalf("DeleteOwner(bob) = %v, %v", del, err)
	}

	// Events: two created (imported), two deleted, no token material.
	var seen []string
	for range 4 {
		ev, err := events.Recv()
		if err != nil {
			t.Fatal(err)
		}
		seen = append(seen, ev.Event.Type)
		if ev.Event.Type == "connection.created" && !ev.Event.Imported {
			t.Errorf("created event of an import lacks imported: %v", ev.Event)
		}
		b, _ := protojson.Marshal(ev)
		if strings.Contains(string(b), "secret-at-") {
			t.Errorf("event carries token material: %s", b)
		}
	}
	if strings.Join(seen, ",") != "connection.created,connection.created,connection.deleted,connection.deleted" {
		t.Errorf("events = %v", seen)
	}

	// The audit says who imported and deleted what, and never the tokens.
	audit, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := protojson.Marshal(audit)
	for _, want := range []string{"ImportConnections", "DeleteConnection", "DeleteOwner", alice} {
		if !strings.Contains(string(b), want) {
			t.Errorf("audit lacks %q", want)
		}
	}
	if strings.Contains(string(b), "secret-at-") {
		t.Errorf("audit carries token material")
	}
}

func TestLifecycle_LimitedOperator(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	// ops-other may use only provider "other": its acme records are refused
	// one by one, and it cannot erase acme connections.
	resp, err := tvv1.NewAdminServiceClient(e.dial("ops-other")).ImportConnections(ctx, &tvv1.ImportConnectionsRequest{
		Connections: []*tvv1.ImportedConnection{importedAcme("alice", "a1")},
	})
	if err != nil || resp.Results[0].Outcome != tvv1.ImportOutcome_IMPORT_OUTCOME_REFUSED {
		t.Fatalf("ImportConnections(ops-other) = %v, %v; want refused", resp, err)
	}
	id := e.connect("alice")
	del, err := tvv1.NewTokenVaultServiceClient(e.dial("ops-other")).DeleteOwner(ctx, &tvv1.DeleteOwnerRequest{Owner: "alice"})
	if err != nil || len(del.ConnectionIds) != 0 {
		t.Errorf("DeleteOwner(ops-other) = %v, %v; want nothing deleted", del, err)
	}
	if _, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id}); err != nil {
		t.Errorf("alice's connection after a limited DeleteOwner: %v", err)
	}
}

// StartConnect's application metadata lands on the connection, with the
// credential that started the flow as its creator.
func TestLifecycle_StartConnect_AppMetadata(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	if _, err := app.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "alice", Provider: "acme", AppMetadata: map[string]string{"bad key": "x"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("StartConnect(bad app_metadata) = %v; want InvalidArgument", err)
	}
	sc, err := app.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: "alice", Provider: "acme", AppMetadata: map[string]string{"crm_id": "42"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.browser.Get(sc.AuthorizationUrl)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	list, err := e.api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: "alice"})
	if err != nil || len(list.Connections) != 1 {
		t.Fatalf("ListConnections = %v, %v", list, err)
	}
	got, err := app.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: list.Connections[0].ConnectionId})
	if err != nil || got.Connection.AppMetadata["crm_id"] != "42" || got.Connection.CreatedBy != "app" || got.Connection.Imported {
		t.Fatalf("GetConnection = %v, %v; want crm_id 42, created by app, not imported", got, err)
	}
}
