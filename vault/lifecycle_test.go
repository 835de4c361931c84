package vault_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
)

// importRec is a valid import record for the fake provider.
func importRec(owner string) vault.ImportRecord {
	return vault.ImportRecord{
		Owner: owner, Provider: "fake", Account: "acct-9", Metadata: map[string]string{"team_id": "T9"},
		AppMetadata: map[string]string{"workspace": "w1"},
		Tokens: []vault.Token{{AccessToken: "imported-at-" + owner, RefreshToken: "imported-rt-" + owner,
			Expiry: time.Date(2026, 11, 22, 13, 0, 0, 0, time.UTC), Scopes: []string{"read"}}},
	}
}

func TestVault_Import(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	existing := h.connect("carol")

	expired := importRec("dave")
	expired.Tokens[0].RefreshToken = ""
	expired.Tokens[0].Expiry = h.clock.Now().Add(-time.Minute)
	swapped := importRec("erin")
	swapped.Tokens[0].AccessToken = "xoxe-1-FAKE-refresh"
	tokenOwner := importRec("xoxb-123-456-abcdef")
	unknown := importRec("frank")
	unknown.Provider = "nope"
	noPrimary := importRec("gina")
	noPrimary.Tokens[0].Name = "user"
	huge := importRec("hank")
	huge.Tokens[0].AccessToken = strings.Repeat("a", 9<<10)
	badApp := importRec("ivan")
	badApp.AppMetadata = map[string]string{"bad key": "x"}

	recs := []vault.ImportRecord{
		importRec("alice"),
		importRec("alice"), // same identity as record 0
		importRec("carol"), // same identity as an existing connection
		{Provider: "fake", Tokens: []vault.Token{{AccessToken: "x"}}},
		expired, swapped, tokenOwner, unknown, noPrimary, huge, badApp,
		importRec("bob"),
	}
	want := []struct {
		outcome vault.ImportOutcome
		reason  string
	}{
		{vault.ImportImported, ""},
		{vault.ImportDuplicate, "same identity as record 0"},
		{vault.ImportDuplicate, ""},
		{vault.ImportRefused, "owner is required"},
		{vault.ImportRefused, "expired and there is no refresh token"},
		{vault.ImportRefused, "access_token holds a refresh token"},
		{vault.ImportRefused, "owner looks like a token"},
		{vault.ImportRefused, `unknown provider "nope"`},
		{vault.ImportRefused, "primary credential"},
		{vault.ImportRefused, "tokens are at most"},
		{vault.ImportRefused, "app_metadata keys"},
		{vault.ImportImported, ""},
	}

	// A dry run reports the same and writes nothing.
	dry, err := h.v.Import(ctx, recs, vault.ImportOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if h.v.Len() != 1 {
		t.Fatalf("after a dry run the vault holds %d connections; want 1", h.v.Len())
	}
	for i, w := range want {
		o := w.outcome
		if o == vault.ImportImported {
			o = vault.ImportValid
		}
		if dry[i].Outcome != o || !strings.Contains(dry[i].Reason, w.reason) {
			t.Errorf("dry run record %d = %v %q; want %v %q", i, dry[i].Outcome, dry[i].Reason, o, w.reason)
		}
	}

	res, err := h.v.Import(ctx, recs, vault.ImportOptions{CreatedBy: "migration"})
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		if res[i].Outcome != w.outcome || !strings.Contains(res[i].Reason, w.reason) {
			t.Errorf("record %d = %v %q; want %v %q", i, res[i].Outcome, res[i].Reason, w.outcome, w.reason)
		}
		if strings.Contains(res[i].Reason, "xox") || strings.Contains(res[i].Reason, "imported-") {
			t.Errorf("record %d's reason %q quotes a token", i, res[i].Reason)
		}
	}
	if res[1].ConnectionID != res[0].ConnectionID || res[2].ConnectionID != existing.ID {
		t.Errorf("duplicates name %s and %s; want %s and %s", res[1].ConnectionID, res[2].ConnectionID, res[0].ConnectionID, existing.ID)
	}

	// The imported grant is served, from memory, as it was given.
	tok, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: res[0].ConnectionID, MinValid: time.Minute})
	if err != nil || tok.AccessToken != "imported-at-alice" {
		t.Errorf("AccessToken(imported) = %q, %v; want the imported token", tok.AccessToken, err)
	}
	// Each imported connection has its created event, marked imported.
	evs, err := h.v.Events(ctx, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	imported := 0
	for _, ev := range evs {
		if ev.Type == vault.EventCreated && ev.Imported {
			imported++
			if ev.Connection.Grant.Token("").AccessToken != "" {
				t.Error("the created event carries an access token")
			}
		}
	}
	if imported != 2 {
		t.Errorf("%d imported created events; want 2", imported)
	}

	// It survives a restart, refreshes like any other, and a rerun of the
	// same file imports nothing twice.
	h.reopen()
	c, err := h.v.Get(ctx, res[11].ConnectionID)
	if err != nil || !c.Imported || c.CreatedBy != "migration" || c.AppMetadata["workspace"] != "w1" || c.Grant.Metadata["team_id"] != "T9" {
		t.Fatalf("imported connection after reopen = %+v, %v", c, err)
	}
	h.clock.Add(time.Minute) // a token just issued is not refreshed again, even forced
	tok, _, err = h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID, Force: true})
	if err != nil || tok.AccessToken == "imported-at-bob" {
		t.Errorf("forced refresh of an imported grant = %q, %v; want a new token", tok.AccessToken, err)
	}
	again, err := h.v.Import(ctx, recs, vault.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range []int{0, 11} {
		if again[i].Outcome != vault.ImportDuplicate || again[i].ConnectionID != res[i].ConnectionID {
			t.Errorf("rerun record %d = %v %s; want a duplicate of %s", i, again[i].Outcome, again[i].ConnectionID, res[i].ConnectionID)
		}
	}
	if h.v.Len() != 3 {
		t.Errorf("vault holds %d connections; want 3", h.v.Len())
	}
}

func TestVault_Import_Verify(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	live, dead := importRec("alice"), importRec("bob")
	res, err := h.v.Import(ctx, []vault.ImportRecord{live}, vault.ImportOptions{Verify: true})
	if err != nil || res[0].Outcome != vault.ImportImported || res[0].Status != vault.StatusActive {
		t.Fatalf("Import(live, verify) = %+v, %v", res, err)
	}
	// The fake cannot validate: verify refreshed, and the new grant is the
	// one stored (the imported refresh token was spent).
	if n := h.p.refreshes.Load(); n != 1 {
		t.Errorf("provider refreshes = %d; want 1", n)
	}
	tok, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: res[0].ConnectionID, MinValid: time.Minute})
	if err != nil || tok.AccessToken == "imported-at-alice" {
		t.Errorf("AccessToken after verify = %q, %v; want the refreshed token", tok.AccessToken, err)
	}

	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
	res, err = h.v.Import(ctx, []vault.ImportRecord{dead}, vault.ImportOptions{Verify: true})
	if err != nil || res[0].Outcome != vault.ImportImported || res[0].Status != vault.StatusNeedsReauth || res[0].Reason != "invalid_grant" {
		t.Fatalf("Import(dead, verify) = %+v, %v; want imported, needs_reauth, invalid_grant", res, err)
	}
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: res[0].ConnectionID}); !errors.Is(err, vault.ErrReauthRequired) {
		t.Errorf("AccessToken(dead import) = %v; want ErrReauthRequired", err)
	}
}

func TestVault_Import_Batch(t *testing.T) {
	h := newHarness(t)
	recs := make([]vault.ImportRecord, vault.MaxImportBatch)
	for i := range recs {
		recs[i] = importRec(fmt.Sprintf("user-%04d", i))
	}
	res, err := h.v.Import(context.Background(), recs, vault.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Outcome != vault.ImportImported {
			t.Fatalf("record %d = %+v", i, r)
		}
	}
	if _, err := h.v.Import(context.Background(), append(recs, recs[0]), vault.ImportOptions{}); !errors.Is(err, vault.ErrInvalidArgument) {
		t.Errorf("Import(%d records) = %v; want ErrInvalidArgument", len(recs)+1, err)
	}
	h.reopen()
	if h.v.Len() != vault.MaxImportBatch {
		t.Errorf("after reopen %d connections; want %d", h.v.Len(), vault.MaxImportBatch)
	}
}

func TestVault_Delete(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	c := h.connect("alice")
	keep := h.connect("bob")
	res, err := h.v.Delete(ctx, c.ID, "user_closed_account")
	if err != nil || res.ProviderErr != nil {
		t.Fatalf("Delete = %+v, %v", res, err)
	}
	if n := h.p.revokes.Load(); n != 1 {
		t.Errorf("provider revokes = %d; want 1 (the grant was live)", n)
	}
	if _, err := h.v.Get(ctx, c.ID); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("Get(deleted) = %v; want ErrNotFound", err)
	}
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID}); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("AccessToken(deleted) = %v; want ErrNotFound", err)
	}
	if _, err := h.v.Delete(ctx, c.ID, ""); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("second Delete = %v; want ErrNotFound", err)
	}
	evs, _ := h.v.Events(ctx, 0, 100)
	last := evs[len(evs)-1]
	if last.Type != vault.EventDeleted || last.Reason != "user_closed_account" || last.Connection.ID != c.ID || len(last.Connection.Grant.Tokens) != 0 {
		t.Errorf("last event = %s %q %s with %d tokens; want connection.deleted of %s without tokens", last.Type, last.Reason, last.Connection.ID, len(last.Connection.Grant.Tokens), c.ID)
	}

	// Gone from the store: no record under its key, and after a restart
	// nothing of alice is listed; bob is untouched.
	if _, _, err := h.store.Get(ctx, "conn/"+c.ID); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("store.Get(conn/%s) = %v; want ErrNotFound", c.ID, err)
	}
	h.reopen()
	if cs, _, _ := h.v.List(ctx, vault.Filter{Owner: "alice"}, "", 10); len(cs) != 0 {
		t.Errorf("after reopen alice has %d connections; want 0", len(cs))
	}
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: keep.ID}); err != nil {
		t.Errorf("AccessToken(bob) = %v", err)
	}
	// Connecting again makes a new connection.
	if again := h.connect("alice"); again.ID == c.ID {
		t.Errorf("connect after delete reused id %s", c.ID)
	}
}

func TestVault_Delete_ProviderDown_DeletesAnyway(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.p.revokeErr = &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503"}
	res, err := h.v.Delete(context.Background(), c.ID, "")
	if err != nil || res.ProviderErr == nil {
		t.Fatalf("Delete = %+v, %v; want deleted with the provider's failure reported", res, err)
	}
	if h.v.Len() != 0 {
		t.Errorf("vault holds %d connections; want 0", h.v.Len())
	}
}

func TestVault_DeleteOwner(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.connect("alice")
	state := h.start(vault.ConnectRequest{Owner: "alice", Provider: "fake", Label: "second"})
	if _, err := h.v.CompleteConnect(ctx, vault.CallbackRequest{Binding: "b", Provider: "fake", State: state, Code: "code"}); err != nil {
		t.Fatal(err)
	}
	bob := h.connect("bob")
	revoked := h.connect("carol")
	if _, err := h.v.Revoke(ctx, revoked.ID, ""); err != nil {
		t.Fatal(err)
	}
	ids, failures, err := h.v.DeleteOwner(ctx, "alice", "erasure")
	if err != nil || len(ids) != 2 || failures != 0 {
		t.Fatalf("DeleteOwner(alice) = %v, %d, %v; want 2 deleted", ids, failures, err)
	}
	revokesBefore := h.p.revokes.Load()
	// A revoked connection is deleted without calling the provider again.
	if ids, _, err := h.v.DeleteOwner(ctx, "carol", ""); err != nil || len(ids) != 1 {
		t.Errorf("DeleteOwner(carol) = %v, %v", ids, err)
	}
	if h.p.revokes.Load() != revokesBefore {
		t.Error("deleting a revoked connection called the provider")
	}
	if ids, _, err := h.v.DeleteOwner(ctx, "alice", ""); err != nil || len(ids) != 0 {
		t.Errorf("DeleteOwner(alice) again = %v, %v; want nothing, no error", ids, err)
	}
	if h.v.Len() != 1 {
		t.Errorf("vault holds %d; want only bob's", h.v.Len())
	}
	if _, err := h.v.Get(ctx, bob.ID); err != nil {
		t.Errorf("Get(bob) = %v", err)
	}
}

func TestVault_Update_AppMetadata(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	c := h.connect("alice")
	got, err := h.v.Update(ctx, vault.UpdateRequest{ID: c.ID, Set: map[string]string{"workspace": "w1", "plan": "pro"}})
	if err != nil || got.AppMetadata["workspace"] != "w1" {
		t.Fatalf("Update(set) = %+v, %v", got, err)
	}
	got, err = h.v.Update(ctx, vault.UpdateRequest{ID: c.ID, Remove: []string{"plan"}})
	if err != nil || len(got.AppMetadata) != 1 {
		t.Fatalf("Update(remove) = %v, %v", got.AppMetadata, err)
	}
	for _, bad := range []vault.UpdateRequest{
		{ID: c.ID, Set: map[string]string{"": "x"}},
		{ID: c.ID, Set: map[string]string{"k": strings.Repeat("v", vault.MaxAppMetadataValue+1)}},
		{ID: c.ID, Set: map[string]string{"k": "line\nbreak"}},
		{ID: c.ID, Set: map[string]string{"k": "v"}, Remove: []string{"k"}},
		{ID: c.ID, Set: tooMany()},
	} {
		if _, err := h.v.Update(ctx, bad); !errors.Is(err, vault.ErrInvalidArgument) {
			t.Errorf("Update(%v) = %v; want ErrInvalidArgument", bad.Set, err)
		}
	}
	if _, err := h.v.Update(ctx, vault.UpdateRequest{ID: "conn_nope", Set: map[string]string{"a": "b"}}); !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("Update(unknown) = %v; want ErrNotFound", err)
	}
	h.reopen()
	c, _ = h.v.Get(ctx, c.ID)
	if c.AppMetadata["workspace"] != "w1" || len(c.AppMetadata) != 1 {
		t.Errorf("after reopen app metadata = %v", c.AppMetadata)
	}
}

func tooMany() map[string]string {
	m := map[string]string{}
	for i := range vault.MaxAppMetadataKeys + 1 {
		m[fmt.Sprintf("k%d", i)] = "v"
	}
	return m
}

// legacyProvider is fakeProvider with Slack's token exchange: non-expiring
// tokens become rotating ones.
type legacyProvider struct {
	*fakeProvider
	exchangeErr error
	calls       int
}

func (p *legacyProvider) ExchangeLegacy(ctx context.Context, g vault.Grant) (vault.Grant, error) {
	p.calls++
	if p.exchangeErr != nil {
		return vault.Grant{}, p.exchangeErr
	}
	done := 0
	for i := range g.Tokens {
		t := &g.Tokens[i]
		if t.RefreshToken != "" || !t.Expiry.IsZero() {
			continue
		}
		t.AccessToken, t.RefreshToken = "rotating-"+t.AccessToken, "rt-for-"+t.AccessToken
		t.Expiry = p.clock.Now().Add(12 * time.Hour)
		done++
	}
	if done == 0 {
		return vault.Grant{}, vault.ErrNothingToExchange
	}
	return g, nil
}

func TestVault_ExchangeLegacy(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	lp := &legacyProvider{fakeProvider: h.p}
	h.swapProvider("fake", lp)
	legacy := importRec("alice")
	legacy.Tokens[0] = vault.Token{AccessToken: "xoxb-legacy-alice"}
	dead := importRec("bob")
	dead.Tokens[0] = vault.Token{AccessToken: "xoxb-legacy-bob"}
	res, err := h.v.Import(ctx, []vault.ImportRecord{legacy, importRec("carol")}, vault.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	aliceID, carolID := res[0].ConnectionID, res[1].ConnectionID

	dry, err := h.v.ExchangeLegacy(ctx, "fake", true)
	if err != nil || lp.calls != 0 {
		t.Fatalf("dry run = %v, %v with %d calls", dry, err, lp.calls)
	}
	out, err := h.v.ExchangeLegacy(ctx, "fake", false)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]vault.ExchangeResult{}
	for _, r := range out {
		byID[r.ConnectionID] = r
	}
	if byID[aliceID].Outcome != vault.ExchangeExchanged || byID[carolID].Outcome != vault.ExchangeSkipped {
		t.Errorf("ExchangeLegacy = %+v; want alice exchanged, carol (rotating) skipped", out)
	}
	tok, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: aliceID, MinValid: time.Hour})
	if err != nil || tok.AccessToken != "rotating-xoxb-legacy-alice" || tok.Expiry.IsZero() {
		t.Errorf("AccessToken after exchange = %+v, %v; want the rotating token", tok, err)
	}
	// Safe to rerun: nothing left to exchange, nothing sent.
	calls := lp.calls
	again, _ := h.v.ExchangeLegacy(ctx, "fake", false)
	for _, r := range again {
		if r.Outcome != vault.ExchangeSkipped {
			t.Errorf("rerun: %+v; want skipped", r)
		}
	}
	if lp.calls != calls {
		t.Errorf("rerun called the provider %d times", lp.calls-calls)
	}

	// A dead legacy token moves its connection to needs_reauth.
	res, _ = h.v.Import(ctx, []vault.ImportRecord{dead}, vault.ImportOptions{})
	lp.exchangeErr = &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_token"}
	out, _ = h.v.ExchangeLegacy(ctx, "fake", false)
	for _, r := range out {
		if r.ConnectionID == res[0].ConnectionID && (r.Outcome != vault.ExchangeFailed || r.Reason != "invalid_token") {
			t.Errorf("dead token: %+v; want failed, invalid_token", r)
		}
	}
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: res[0].ConnectionID}); !errors.Is(err, vault.ErrReauthRequired) {
		t.Errorf("AccessToken(dead legacy) = %v; want ErrReauthRequired", err)
	}
}

// swapProvider reopens the harness's vault with p serving the named
// provider.
func (h *harness) swapProvider(name string, p vault.Provider) {
	h.t.Helper()
	h.store.Close()
	h.openWith(context.Background(), func(c *vault.Config) { c.Providers = map[string]vault.Provider{name: p} })
}

// BenchmarkVault_Import imports b.N connections in batches of 500, as
// `tokenvault connections import` sends them, into a bbolt file with fsync
// on. Run it with -benchtime 100000x for the figure in the README.
func BenchmarkVault_Import(b *testing.B) {
	h := newHarness(b)
	h.reopenSynced()
	ctx := context.Background()
	batch := make([]vault.ImportRecord, 0, 500)
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := range b.N {
		batch = append(batch, importRec(fmt.Sprintf("user-%07d", i)))
		if len(batch) == cap(batch) || i == b.N-1 {
			res, err := h.v.Import(ctx, batch, vault.ImportOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if res[0].Outcome != vault.ImportImported {
				b.Fatalf("record %d: %+v", i, res[0])
			}
			batch = batch[:0]
		}
	}
	b.StopTimer()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(b.N), "heap-B/record")
	b.ReportMetric(float64(after.Sys)/(1<<20), "sys-MiB")
}

// reopenSynced reopens the harness's store with fsync on, as the sidecar
// runs it.
func (h *harness) reopenSynced() {
	h.t.Helper()
	h.store.Close()
	st, err := bolt.Open(h.path, bolt.Options{})
	if err != nil {
		h.t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(context.Background(), st, h.mk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.faults = &faultyStore{Store: st}
	v, err := vault.Open(context.Background(), vault.Config{
		Store: h.faults, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}, Now: h.clock.Now,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.store, h.v = st, v
}
