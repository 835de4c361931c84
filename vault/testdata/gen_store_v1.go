// gen_store_v1.go wrote store-v1.db and store-v1.json with the code of
// commit b366564, before the vault package was split (go run it from a
// checkout of that commit: go run ./cmd/gentestdata store-v1.db
// store-v1.json). It does not build against the code of today; the go tool
// ignores testdata.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/url"
	"os"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

type prov struct {
	c *clock
	n int
}

func (p *prov) PKCE() bool { return true }
func (p *prov) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + url.QueryEscape(r.State), nil
}
func (p *prov) grant(scopes []string) vault.Grant {
	p.n++
	return vault.Grant{
		Tokens: []vault.Token{{
			AccessToken: fmt.Sprintf("test-access-%d", p.n), RefreshToken: fmt.Sprintf("test-refresh-%d", p.n),
			TokenType: "Bearer", Expiry: p.c.Now().Add(24 * time.Hour), IssuedAt: p.c.Now(),
		}},
		Scopes: scopes, Account: fmt.Sprintf("acct-%d", p.n), Metadata: map[string]string{"team_id": "T1"},
	}
}
func (p *prov) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	return p.grant(r.Scopes), nil
}
func (p *prov) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	return p.grant(g.Scopes), nil
}
func (p *prov) Revoke(ctx context.Context, g vault.Grant) error { return nil }

type golden struct {
	MasterKey   string       `json:"master_key"`
	Now         time.Time    `json:"now"`
	Term        uint32       `json:"term"`
	Connections []goldenConn `json:"connections"`
	Events      []goldenEv   `json:"events"`
	Audit       []goldenAud  `json:"audit"`
	Cursor      string       `json:"webhook_cursor"`
}
type goldenConn struct {
	ID, Owner, Tenant, Provider, Label, Status, AccessToken, RefreshToken, Account string
	Scopes                                                                         []string
	Generation                                                                     uint64
}
type goldenEv struct {
	ID, Type, ConnectionID, Reason string
	Sequence, ConnectionSequence   uint64
}
type goldenAud struct {
	ID, Caller, Role, Method, ConnectionID, Provider, Outcome, Reason string
	Time                                                              time.Time
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: gentestdata store.db golden.json")
	}
	ctx := context.Background()
	mk, err := vault.ParseMasterKey([]byte("dG9rZW52YXVsdCB0ZXN0ZGF0YTogbm90IGEga2V5ISE="))
	if err != nil {
		log.Fatal(err)
	}
	os.Remove(os.Args[1])
	st, err := bolt.Open(os.Args[1], bolt.Options{})
	if err != nil {
		log.Fatal(err)
	}
	kr, err := vault.OpenKeyring(ctx, st, mk)
	if err != nil {
		log.Fatal(err)
	}
	c := &clock{t: t0}
	p := &prov{c: c}
	v, err := vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"acme": p}, Now: c.Now,
		ReturnTo: []string{"https://app.example/"}})
	if err != nil {
		log.Fatal(err)
	}
	connect := func(owner, tenant, label string) *vault.Connection {
		u, _, err := v.StartConnect(ctx, vault.ConnectRequest{Owner: owner, Tenant: tenant, Provider: "acme", Label: label, Scopes: []string{"read", "write"}})
		if err != nil {
			log.Fatal(err)
		}
		pu, _ := url.Parse(u)
		res, err := v.CompleteConnect(ctx, "acme", pu.Query().Get("state"), "code", "")
		if err != nil {
			log.Fatal(err)
		}
		c.t = c.t.Add(time.Minute)
		return res.Connection
	}
	a := connect("alice", "", "")
	b := connect("bob", "t1", "work")
	connect("carol", "t2", "")
	// A key rotation with its re-wrap: records under terms 1 and 2.
	if _, _, err := v.RotateKeys(ctx); err != nil {
		log.Fatal(err)
	}
	connect("dave", "", "")
	if _, err := v.Refresh(ctx, a.ID, ""); err != nil {
		log.Fatal(err)
	}
	c.t = c.t.Add(time.Minute)
	if _, err := v.Revoke(ctx, b.ID, "user_left"); err != nil {
		log.Fatal(err)
	}
	// A pending connect flow.
	if _, _, err := v.StartConnect(ctx, vault.ConnectRequest{Owner: "erin", Provider: "acme"}); err != nil {
		log.Fatal(err)
	}
	// A webhook endpoint's cursor.
	sec, _ := vault.ParseWebhookSecret("whsec_dGVzdGRhdGEtb25seS1ub3QtYS1yZWFsLXNlY3JldA==")
	if _, err := vault.NewWebhooks(ctx, v, vault.WebhooksConfig{Endpoints: []vault.WebhookEndpoint{{Name: "app", URL: "http://127.0.0.1:9/hooks", Secrets: []vault.WebhookSecret{sec}, AllowPrivate: true}}}); err != nil {
		log.Fatal(err)
	}
	au := vault.NewAuditLog(vault.AuditConfig{Store: st, Now: c.Now})
	au.Record(vault.AuditRecord{Time: c.Now(), Caller: "app", Role: "application", Method: "/tokenvault.v1.TokenVaultService/GetAccessToken", ConnectionID: a.ID, Provider: "acme", Outcome: "OK"})
	au.Record(vault.AuditRecord{Time: c.Now(), Caller: "ops", Role: "operator", Method: "/tokenvault.v1.TokenVaultService/RevokeConnection", ConnectionID: b.ID, Provider: "acme", Outcome: "OK"})
	au.Record(vault.AuditRecord{Time: c.Now(), Caller: "app", Role: "application", Method: "/tokenvault.v1.TokenVaultService/RevokeConnection", ConnectionID: a.ID, Outcome: "PERMISSION_DENIED", Reason: "PERMISSION_DENIED"})
	au.Close()

	// What this code reads back.
	g := golden{MasterKey: mk.Encode(), Now: c.Now(), Term: kr.Term()}
	conns, _, err := v.List(ctx, vault.Filter{}, "", 100)
	if err != nil {
		log.Fatal(err)
	}
	for _, cn := range conns {
		full, err := v.Get(ctx, cn.ID)
		if err != nil {
			log.Fatal(err)
		}
		gc := goldenConn{ID: full.ID, Owner: full.Owner, Tenant: full.Tenant, Provider: full.Provider, Label: full.Label,
			Status: string(full.Status), Account: full.Grant.Account, Scopes: full.Grant.Scopes, Generation: full.Generation}
		if t := full.Grant.Token(""); t != nil {
			gc.AccessToken, gc.RefreshToken = t.AccessToken, t.RefreshToken
		}
		g.Connections = append(g.Connections, gc)
	}
	evs, err := v.Events(ctx, 0, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, e := range evs {
		g.Events = append(g.Events, goldenEv{ID: e.ID, Type: e.Type, ConnectionID: e.Connection.ID, Reason: e.Reason, Sequence: e.Sequence, ConnectionSequence: e.ConnectionSequence})
	}
	au2 := vault.NewAuditLog(vault.AuditConfig{Store: st, Now: c.Now})
	recs, _, err := au2.List(ctx, vault.AuditFilter{}, "", 100)
	if err != nil {
		log.Fatal(err)
	}
	au2.Close()
	for _, r := range recs {
		g.Audit = append(g.Audit, goldenAud{ID: r.ID, Caller: r.Caller, Role: r.Role, Method: r.Method, ConnectionID: r.ConnectionID, Provider: r.Provider, Outcome: r.Outcome, Reason: r.Reason, Time: r.Time})
	}
	cur, _, err := st.Get(ctx, "meta/webhook/app/cursor")
	if err != nil {
		log.Fatal(err)
	}
	g.Cursor = string(cur)
	if err := st.Close(); err != nil {
		log.Fatal(err)
	}
	out, _ := json.MarshalIndent(g, "", "  ")
	if err := os.WriteFile(os.Args[2], append(out, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}
