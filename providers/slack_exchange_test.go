package providers_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/providers"
)

// legacyGrant is a bot install made before the app turned token rotation
// on: one non-expiring token, no refresh token.
func legacyGrant() providers.Grant {
	return providers.Grant{
		Tokens:   []providers.Token{{AccessToken: "xoxb-FAKE-legacy", TokenType: "Bearer", Scopes: []string{"chat:write"}}},
		Scopes:   []string{"chat:write"},
		Account:  "T0FAKETEAM",
		Metadata: map[string]string{"primary_token": "bot", "team_id": "T0FAKETEAM"},
	}
}

func TestSlack_ExchangeLegacy(t *testing.T) {
	rs := newReplay(t)
	p := newSlack(t, rs.URL, nil)
	rs.on("/api/oauth.v2.exchange", answer(t, "slack", 200, "exchange_legacy.json"))
	g, err := p.ExchangeLegacy(context.Background(), legacyGrant())
	if err != nil {
		t.Fatalf("ExchangeLegacy = %v", err)
	}
	reqs := rs.requests("/api/oauth.v2.exchange")
	if len(reqs) != 1 {
		t.Fatalf("oauth.v2.exchange called %d times; want 1", len(reqs))
	}
	f := reqs[0].Form()
	if f.Get("token") != "xoxb-FAKE-legacy" || f.Get("client_id") != fakeClientID || f.Get("client_secret") != fakeClientSecret {
		t.Errorf("exchange form = %v; want the legacy token and the client's id and secret (the method's arguments)", f)
	}
	tok := g.Tokens[0]
	if tok.AccessToken != "xoxe.xoxb-1-FAKE-bot-access-exchanged" || tok.RefreshToken != "xoxe-1-FAKE-bot-refresh-exchanged" || tok.TokenType != "Bearer" {
		t.Errorf("exchanged token = %+v; want the rotating pair, type Bearer", tok)
	}
	if d := tok.Expiry.Sub(fixedNow); d != 12*time.Hour {
		t.Errorf("exchanged expiry in %v; want 12h from expires_in", d)
	}
	if g.Metadata["team_id"] != "T0FAKETEAM" || g.Account != "T0FAKETEAM" {
		t.Errorf("exchange lost the account: %+v", g)
	}

	// An exchanged grant has nothing left to exchange: nothing is sent.
	if _, err := p.ExchangeLegacy(context.Background(), g); !errors.Is(err, providers.ErrNothingToExchange) {
		t.Errorf("ExchangeLegacy(rotating grant) = %v; want ErrNothingToExchange", err)
	}
	if n := len(rs.requests("/api/oauth.v2.exchange")); n != 1 {
		t.Errorf("oauth.v2.exchange called %d times after a rerun; want still 1", n)
	}
}

func TestSlack_ExchangeLegacy_Errors(t *testing.T) {
	for _, tc := range []struct {
		fixture string
		class   providers.Class
		code    string
	}{
		{"exchange_legacy_token_already_exchanged.json", providers.ClassInvalidRequest, "token_already_exchanged"},
		{"exchange_legacy_token_rotation_not_enabled.json", providers.ClassConfig, "token_rotation_not_enabled"},
		{"exchange_legacy_invalid_token.json", providers.ClassReauth, "invalid_token"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			rs := newReplay(t)
			p := newSlack(t, rs.URL, nil)
			rs.on("/api/oauth.v2.exchange", answer(t, "slack", 200, tc.fixture))
			_, err := p.ExchangeLegacy(context.Background(), legacyGrant())
			wantClass(t, "ExchangeLegacy", err, tc.class, tc.code)
		})
	}
}
