package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// TestGetAccessToken_ForceUnrefreshable: a forced refresh of a token that
// cannot be refreshed (no refresh token, as GitHub OAuth Apps and Slack
// without rotation) asks the provider (RFC 7662 introspection here): while
// the grant lives, the caller gets the token; once it is revoked at the
// provider, the forced call moves the connection to needs_reauth with the
// provider's reason and its event, and every caller after, forced or not,
// gets NEEDS_REAUTHORIZATION instead of the dead token.
func TestGetAccessToken_ForceUnrefreshable(t *testing.T) {
	e := newEnv(t, providertest.Options{EditTokenResponse: func(resp map[string]any) { delete(resp, "refresh_token") }})
	id := e.connect("alice")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tok, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id})
	if err != nil {
		t.Fatal(err)
	}

	e.clock.Add(3 * time.Second)
	before := e.fake.Stats().Introspect // the exchange's, naming the account
	got, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
	if err != nil || got.AccessToken != tok.AccessToken {
		t.Fatalf("forced, grant live: %v, %v; want the token", got, err)
	}
	if n := e.fake.Stats().Introspect - before; n != 1 {
		t.Errorf("forced, grant live: %d introspections; want 1", n)
	}

	watch, err := e.api.WatchEvents(ctx, &tvv1.WatchEventsRequest{Types: []string{"connection.needs_reauth"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range e.fake.Grants() {
		e.fake.RevokeGrant(g.ID)
	}
	e.clock.Add(3 * time.Second)
	_, err = e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
	if status.Code(err) != codes.FailedPrecondition || reason(err) != "NEEDS_REAUTHORIZATION" {
		t.Fatalf("forced, grant revoked: %v; want FailedPrecondition/NEEDS_REAUTHORIZATION", err)
	}
	for _, force := range []bool{false, true} {
		if _, err := tvv1.NewTokenVaultServiceClient(e.dial("app")).GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: force}); reason(err) != "NEEDS_REAUTHORIZATION" {
			t.Errorf("another caller after (force %v): %v; want NEEDS_REAUTHORIZATION, not the dead token", force, err)
		}
	}
	c, err := e.api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: id})
	if err != nil || c.Connection.Status != tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH || c.Connection.StatusReason == "" {
		t.Errorf("connection after = %v, %v; want NEEDS_REAUTH with the provider's reason", c, err)
	}
	ev, err := watch.Recv()
	if err != nil || ev.GetEvent().GetType() != "connection.needs_reauth" || ev.GetEvent().GetConnection().GetConnectionId() != id {
		t.Errorf("event = %v, %v; want connection.needs_reauth of %s", ev, err, id)
	}
}
