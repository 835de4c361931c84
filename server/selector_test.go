package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// connectLabel runs a connect flow for owner with label through the
// browser's part and returns the new (or reconnected) connection's id.
func (e *env) connectLabel(owner, label string) string {
	e.t.Helper()
	return e.connectIn("", owner, label)
}

// connectIn is connectLabel in a tenant.
func (e *env) connectIn(tenant, owner, label string) string {
	e.t.Helper()
	ctx := context.Background()
	sc, err := e.api.StartConnect(ctx, &tvv1.StartConnectRequest{Owner: owner, Tenant: tenant, Provider: "acme", Label: label})
	if err != nil {
		e.t.Fatalf("StartConnect = %v", err)
	}
	resp, err := e.browser.Get(sc.AuthorizationUrl)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("callback answered %d", resp.StatusCode)
	}
	list, err := e.api.ListConnections(ctx, &tvv1.ListConnectionsRequest{Owner: owner, Status: tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, c := range list.Connections {
		if c.Label == label && c.Tenant == tenant {
			return c.ConnectionId
		}
	}
	e.t.Fatalf("no active connection of %q labelled %q after the flow", owner, label)
	return ""
}

func errorInfo(err error) *errdetails.ErrorInfo {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei
		}
	}
	return nil
}

func sel(owner, provider, label string) *tvv1.ConnectionSelector {
	return &tvv1.ConnectionSelector{Owner: owner, Provider: provider, Label: label}
}

// TestSelector_GetAccessToken: a selector finds the one connection of an
// owner at a provider; bad selectors, and selectors that match none or
// several, get the documented errors and never pick one.
func TestSelector_GetAccessToken(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	alice := e.connectLabel("alice", "")
	bobWork := e.connectLabel("bob", "work")
	bobHome := e.connectLabel("bob", "home")
	carol := e.connectLabel("carol", "")
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: carol}); err != nil {
		t.Fatal(err)
	}
	// dave was revoked and connected again: a new connection, and the old
	// revoked one still on record.
	daveOld := e.connectLabel("dave", "")
	if _, err := e.api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: daveOld}); err != nil {
		t.Fatal(err)
	}
	daveNew := e.connectLabel("dave", "")
	if daveNew == daveOld {
		t.Fatalf("reconnecting a revoked connection kept its id %s; the test needs a new one", daveOld)
	}
	// erin has one connection in each of two tenants, without labels.
	erinT1 := e.connectIn("t1", "erin", "")
	e.connectIn("t2", "erin", "")

	for _, tc := range []struct {
		name       string
		req        *tvv1.GetAccessTokenRequest
		wantID     string
		wantCode   codes.Code
		wantReason string
		wantMsg    string            // in the status message
		wantMeta   map[string]string // in ErrorInfo metadata
	}{
		{name: "by owner and provider", req: &tvv1.GetAccessTokenRequest{Selector: sel("alice", "acme", "")}, wantID: alice},
		{name: "by label", req: &tvv1.GetAccessTokenRequest{Selector: sel("bob", "acme", "home")}, wantID: bobHome},
		{name: "by other label", req: &tvv1.GetAccessTokenRequest{Selector: sel("bob", "acme", "work")}, wantID: bobWork},
		{name: "reconnected after revocation: the live one", req: &tvv1.GetAccessTokenRequest{Selector: sel("dave", "acme", "")}, wantID: daveNew},
		{name: "by tenant", req: &tvv1.GetAccessTokenRequest{Selector: &tvv1.ConnectionSelector{Owner: "erin", Provider: "acme", Tenant: "t1"}}, wantID: erinT1},
		{name: "several tenants without a tenant", req: &tvv1.GetAccessTokenRequest{Selector: sel("erin", "acme", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "2 connections",
			wantMeta: map[string]string{"connections": "2", "labels": "1"}},
		{name: "in a tenant the owner has none in", req: &tvv1.GetAccessTokenRequest{Selector: &tvv1.ConnectionSelector{Owner: "alice", Provider: "acme", Tenant: "t1"}},
			wantCode: codes.NotFound, wantReason: "NOT_CONNECTED"},
		{name: "several without a label", req: &tvv1.GetAccessTokenRequest{Selector: sel("bob", "acme", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "2 connections",
			wantMeta: map[string]string{"connections": "2", "labels": "2"}},
		{name: "only revoked", req: &tvv1.GetAccessTokenRequest{Selector: sel("carol", "acme", "")},
			wantCode: codes.FailedPrecondition, wantReason: "NOT_CONNECTED"},
		{name: "no such owner", req: &tvv1.GetAccessTokenRequest{Selector: sel("zed", "acme", "")},
			wantCode: codes.NotFound, wantReason: "NOT_CONNECTED"},
		{name: "no such label", req: &tvv1.GetAccessTokenRequest{Selector: sel("bob", "acme", "play")},
			wantCode: codes.NotFound, wantReason: "NOT_CONNECTED"},
		{name: "no such provider", req: &tvv1.GetAccessTokenRequest{Selector: sel("alice", "nope", "")},
			wantCode: codes.NotFound, wantReason: "NOT_CONNECTED"},
		{name: "both id and selector", req: &tvv1.GetAccessTokenRequest{ConnectionId: alice, Selector: sel("alice", "acme", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "not both"},
		{name: "both id and an empty selector", req: &tvv1.GetAccessTokenRequest{ConnectionId: alice, Selector: &tvv1.ConnectionSelector{}},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "not both"},
		{name: "neither", req: &tvv1.GetAccessTokenRequest{},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "connection_id or selector is required"},
		{name: "selector without provider", req: &tvv1.GetAccessTokenRequest{Selector: sel("alice", "", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "selector.owner and selector.provider are required"},
		{name: "selector without owner", req: &tvv1.GetAccessTokenRequest{Selector: sel("", "acme", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "selector.owner and selector.provider are required"},
		{name: "selector field too long", req: &tvv1.GetAccessTokenRequest{Selector: sel(strings.Repeat("a", 257), "acme", "")},
			wantCode: codes.InvalidArgument, wantReason: "INVALID_ARGUMENT", wantMsg: "request field selector.owner is longer than 256 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.api.GetAccessToken(ctx, tc.req)
			if status.Code(err) != tc.wantCode || reason(err) != tc.wantReason {
				t.Fatalf("GetAccessToken(%v) = %v (reason %q); want %v/%q", tc.req, err, reason(err), tc.wantCode, tc.wantReason)
			}
			if err != nil {
				if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("message %q; want it to contain %q", msg, tc.wantMsg)
				}
				for k, v := range tc.wantMeta {
					if got := errorInfo(err).GetMetadata()[k]; got != v {
						t.Errorf("metadata %s = %q; want %q", k, got, v)
					}
				}
				return
			}
			if resp.ConnectionId != tc.wantID || resp.AccessToken == "" {
				t.Errorf("GetAccessToken(%v) = connection %s, token %t; want %s and a token", tc.req, resp.ConnectionId, resp.AccessToken != "", tc.wantID)
			}
			byID, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: tc.wantID})
			if err != nil || byID.AccessToken != resp.AccessToken {
				t.Errorf("by id = %v; want the token the selector got", err)
			}
		})
	}
}

func TestSelector_GetConnection(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	id := e.connectLabel("alice", "work")
	got, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{Selector: sel("alice", "acme", "")})
	if err != nil || got.Connection.ConnectionId != id || got.Connection.Label != "work" {
		t.Fatalf("GetConnection(alice, acme) = %v, %v; want %s", got, err, id)
	}
	for _, req := range []*tvv1.GetConnectionRequest{
		{},
		{ConnectionId: id, Selector: sel("alice", "acme", "")},
	} {
		if _, err := e.api.GetConnection(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("GetConnection(%v) = %v; want INVALID_ARGUMENT", req, err)
		}
	}
	if _, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{Selector: sel("alice", "acme", "home")}); reason(err) != "NOT_CONNECTED" {
		t.Errorf("GetConnection(alice, acme, home) = %v; want NOT_CONNECTED", err)
	}
}

// TestSelector_ProviderLimit: a credential limited to other providers
// learns nothing of a connection through a selector, as by id; the audit
// records the connection a selector resolved to.
func TestSelector_ProviderLimitAndAudit(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	id := e.connectLabel("alice", "")
	other := tvv1.NewTokenVaultServiceClient(e.dial("app-other"))
	if _, err := other.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{Selector: sel("alice", "acme", "")}); status.Code(err) != codes.NotFound || reason(err) != "NOT_CONNECTED" {
		t.Errorf("limited to another provider, by selector = %v; want NOT_FOUND/NOT_CONNECTED", err)
	}
	if _, err := other.GetConnection(ctx, &tvv1.GetConnectionRequest{Selector: sel("alice", "acme", "")}); status.Code(err) != codes.NotFound {
		t.Errorf("limited to another provider, GetConnection by selector = %v; want NOT_FOUND", err)
	}
	app := tvv1.NewTokenVaultServiceClient(e.dial("app-acme"))
	if _, err := app.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{Selector: sel("alice", "acme", "")}); err != nil {
		t.Fatalf("limited to acme, by selector = %v", err)
	}
	resp, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Caller: "app-acme"})
	if err != nil || len(resp.Events) != 1 {
		t.Fatalf("audit of app-acme = %v, %v; want one event", resp, err)
	}
	if ev := resp.Events[0]; ev.ConnectionId != id || ev.Provider != "acme" || ev.Outcome != "OK" {
		t.Errorf("audit event %v; want connection %s, provider acme, OK", ev, id)
	}
	denied, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Caller: "app-other", Method: tvv1.TokenVaultService_GetAccessToken_FullMethodName})
	if err != nil || len(denied.Events) != 1 || denied.Events[0].Outcome != "NOT_FOUND" || denied.Events[0].ConnectionId != "" {
		t.Errorf("audit of the hidden selector = %v, %v; want one NOT_FOUND naming no connection", denied, err)
	}
}
