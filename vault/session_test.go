package vault_test

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
)

func TestSession_CreateAndLookUp(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tok, s, err := h.v.CreateSession(ctx, vault.SessionRequest{
		Owner: "alice", Tenant: "t1", Providers: []string{"fake"}, ReturnTo: "https://app.example/settings/integrations",
		AllowDisconnect: true, TTL: 20 * time.Minute, AppMetadata: map[string]string{"crm_id": "42"}, CreatedBy: "app",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) < 43 || strings.Contains(s.ID, tok) || !s.Expires.Equal(h.clock.Now().Add(20*time.Minute)) {
		t.Fatalf("token %d chars, session %+v", len(tok), s)
	}
	got, err := h.v.Session(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != s.ID || got.Owner != "alice" || got.Tenant != "t1" || !got.AllowDisconnect || got.AppMetadata["crm_id"] != "42" ||
		got.CreatedBy != "app" || got.ReturnTo != "https://app.example/settings/integrations" || len(got.Providers) != 1 {
		t.Errorf("Session = %+v; want what was created", got)
	}
	// Tampered, foreign (another session's token with a character changed),
	// empty and oversized tokens are all just invalid.
	last := "A"
	if strings.HasSuffix(tok, "A") {
		last = "B"
	}
	tampered := tok[:len(tok)-1] + last
	for _, bad := range []string{"", "forged", tampered, strings.Repeat("A", 300)} {
		if _, err := h.v.Session(ctx, bad); !errors.Is(err, vault.ErrSessionInvalid) {
			t.Errorf("Session(%.20q) = %v; want ErrSessionInvalid", bad, err)
		}
	}
	h.clock.Add(20 * time.Minute)
	if _, err := h.v.Session(ctx, tok); !errors.Is(err, vault.ErrSessionInvalid) {
		t.Errorf("expired Session = %v; want ErrSessionInvalid", err)
	}
	// The sweep deletes it with the expired flows.
	if n, err := h.v.SweepStates(ctx); err != nil || n != 1 {
		t.Errorf("SweepStates = %d, %v; want 1 (the session)", n, err)
	}
}

func TestSession_Validation(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name string
		req  vault.SessionRequest
		want error
	}{
		{"no owner", vault.SessionRequest{}, vault.ErrInvalidArgument},
		{"ttl over an hour", vault.SessionRequest{Owner: "a", TTL: time.Hour + time.Second}, vault.ErrInvalidArgument},
		{"negative ttl", vault.SessionRequest{Owner: "a", TTL: -time.Second}, vault.ErrInvalidArgument},
		{"unknown provider", vault.SessionRequest{Owner: "a", Providers: []string{"nope"}}, vault.ErrUnknownProvider},
		{"return_to elsewhere", vault.SessionRequest{Owner: "a", ReturnTo: "https://evil.example/"}, vault.ErrReturnToNotAllowed},
		{"return_to encoded dot-dot", vault.SessionRequest{Owner: "a", ReturnTo: "https://app.example/settings/%2e%2e/%2e%2e/logout"}, vault.ErrReturnToNotAllowed},
		{"bad app metadata", vault.SessionRequest{Owner: "a", AppMetadata: map[string]string{"bad key": "x"}}, vault.ErrInvalidArgument},
		{"an hour", vault.SessionRequest{Owner: "a", TTL: time.Hour}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := h.v.CreateSession(context.Background(), tc.req)
			if !errors.Is(err, tc.want) {
				t.Errorf("CreateSession = %v; want %v", err, tc.want)
			}
		})
	}
}

// The store holds only the token's hash: the token's bytes appear nowhere
// in the bbolt file, in any encoding a reader might try.
func TestSession_TokenStoredOnlyHashed(t *testing.T) {
	h := newHarness(t)
	var toks []string
	for range 3 {
		tok, _, err := h.v.CreateSession(context.Background(), vault.SessionRequest{Owner: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	h.store.Close() // flushed and closed: the file as it rests on disk
	raw, err := os.ReadFile(h.path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range toks {
		for _, form := range []string{tok, strings.ToLower(tok), tok[:20]} {
			if bytes.Contains(raw, []byte(form)) {
				t.Errorf("the store file holds the session token (%d bytes of it)", len(form))
			}
		}
	}
	h.open()
	if _, err := h.v.Session(context.Background(), toks[0]); err != nil {
		t.Errorf("after reopening, Session = %v; want the session", err)
	}
}

// A flow without a binding goes through its start URL: the first browser
// to open it binds it; the callback completes only with that browser's
// binding, and makes no token request otherwise.
func TestConnect_StartURLBindsTheFlow(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	u, _, err := h.v.StartConnect(ctx, vault.ConnectRequest{Owner: "alice", Provider: "fake"})
	if err != nil {
		t.Fatal(err)
	}
	su, _ := url.Parse(u)
	flow := su.Query().Get("flow")
	if !strings.HasPrefix(u, "https://tv.example/connect/start?flow=") || flow == "" || su.Query().Has("state") {
		t.Fatalf("StartConnect = %q; want the start URL", u)
	}
	if _, err := h.v.BeginConnect(ctx, flow, ""); !errors.Is(err, vault.ErrFlowInvalid) {
		t.Errorf("BeginConnect without a binding = %v; want ErrFlowInvalid", err)
	}
	auth, err := h.v.BeginConnect(ctx, flow, "browser-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.v.BeginConnect(ctx, flow, "browser-b"); !errors.Is(err, vault.ErrFlowInvalid) {
		t.Errorf("a second BeginConnect = %v; want ErrFlowInvalid: a flow binds once", err)
	}
	pu, _ := url.Parse(auth)
	state := pu.Query().Get("state")
	for _, b := range []string{"", "browser-b"} {
		_, err := h.v.CompleteConnect(ctx, vault.CallbackRequest{Provider: "fake", State: state, Code: "code", Binding: b})
		if !errors.Is(err, vault.ErrBrowserMismatch) {
			t.Errorf("callback with binding %q = %v; want ErrBrowserMismatch", b, err)
		}
	}
	if n := h.p.exchanges.Load(); n != 0 {
		t.Fatalf("exchanges = %d; want 0: a callback from another browser makes no token request", n)
	}
	res, err := h.v.CompleteConnect(ctx, vault.CallbackRequest{Provider: "fake", State: state, Code: "code", Binding: "browser-a"})
	if err != nil || res.Connection.Owner != "alice" {
		t.Fatalf("callback in the flow's browser = %v, %v", res, err)
	}
	if _, err := h.v.CompleteConnect(ctx, vault.CallbackRequest{Provider: "fake", State: state, Code: "code", Binding: "browser-a"}); !errors.Is(err, vault.ErrInvalidState) {
		t.Errorf("replayed callback = %v; want ErrInvalidState: state is single-use", err)
	}
	// An unopened flow expires and is swept.
	u, _, _ = h.v.StartConnect(ctx, vault.ConnectRequest{Owner: "bob", Provider: "fake"})
	su, _ = url.Parse(u)
	h.clock.Add(11 * time.Minute)
	if _, err := h.v.BeginConnect(ctx, su.Query().Get("flow"), "browser-a"); !errors.Is(err, vault.ErrFlowInvalid) {
		t.Errorf("expired BeginConnect = %v; want ErrFlowInvalid", err)
	}
}
