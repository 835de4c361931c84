package vault

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// ImportRecord is one grant issued elsewhere (another broker, the
// application's own database) to bring into the vault.
type ImportRecord struct {
	Owner, Tenant, Provider, Label, Purpose string
	// Account is the provider account's readable id; Metadata its fields
	// (Slack team_id, Salesforce instance_url, ...), as the provider's
	// connect flow stores them.
	Account     string
	Metadata    map[string]string
	AppMetadata map[string]string
	// RequestedScopes: what the application had asked for; empty: the
	// granted scopes.
	RequestedScopes []string
	// Tokens are the grant's credentials; one must be the primary ("").
	Tokens []Token
}

// ImportOptions say how Import treats its records.
type ImportOptions struct {
	// DryRun validates and reports without writing anything.
	DryRun bool
	// Verify asks the provider once per grant (Validate, or a refresh where
	// the provider cannot validate); a dead grant is imported needing
	// re-authorization.
	Verify bool
	// CreatedBy names the credential importing: the connections' owning
	// application.
	CreatedBy string
}

// ImportOutcome is what Import did with one record.
type ImportOutcome uint8

const (
	ImportImported  ImportOutcome = iota + 1
	ImportDuplicate               // (owner, tenant, provider, label) exists
	ImportRefused                 // invalid; Reason says why
	ImportValid                   // DryRun: would be imported
)

// ImportResult is the outcome of one record of Import.
type ImportResult struct {
	Outcome ImportOutcome
	// ConnectionID is the new connection's, or the existing one's for a
	// duplicate.
	ConnectionID string
	// Reason says why a record was refused, or, for an imported record
	// that Verify found dead, the provider's code. Never token material.
	Reason string
	Status Status
}

// MaxImportBatch is how many records one Import call takes.
const MaxImportBatch = 1000

// importVerifiers is how many provider calls an Import with Verify makes
// at once.
const importVerifiers = 4

// Bounds of an imported record.
const (
	maxImportIdent   = 256       // owner, tenant, label, account
	maxImportText    = 1024      // purpose
	maxImportTokens  = 8         // credentials
	maxImportToken   = 8 << 10   // one access or refresh token
	maxImportScopes  = 200       // scopes per credential or request
	maxImportScope   = 256       // one scope
	maxImportMetaKey = 64        // provider metadata key
	maxImportMetaVal = 2048      // provider metadata value (URLs)
	maxImportMeta    = 32        // provider metadata keys
	maxImportRecord  = 256 << 10 // everything in one record
)

// Import brings recs in, each sealed and stored like a connection made by
// a connect flow, and returns one result per record, in order. A record
// whose identity (owner, tenant, provider, label) already has a
// connection that is not revoked is a duplicate, so an interrupted import
// can be run again. Each imported connection emits EventCreated with
// Imported set. A refused record does not stop the others; an error is
// returned only when the store fails, and results up to then are lost to
// the caller but what was written stays written (a rerun reports it as
// duplicates).
func (v *Vault) Import(ctx context.Context, recs []ImportRecord, opts ImportOptions) ([]ImportResult, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	if len(recs) > MaxImportBatch {
		return nil, fmt.Errorf("%w: at most %d records per import call, got %d", ErrInvalidArgument, MaxImportBatch, len(recs))
	}
	out := make([]ImportResult, len(recs))
	type pending struct {
		i     int
		c     *Connection
		ik    string
		ikRev uint64
	}
	var todo []pending
	seen := make(map[string]int, len(recs)) // identity key -> index of its first record
	now := v.now()
	for i := range recs {
		r := &recs[i]
		if reason := v.checkImport(r, now); reason != "" {
			out[i] = ImportResult{Outcome: ImportRefused, Reason: reason}
			continue
		}
		ik := identKey(r.Owner, r.Tenant, r.Provider, r.Label)
		if j, dup := seen[ik]; dup {
			out[i] = ImportResult{Outcome: ImportDuplicate, ConnectionID: out[j].ConnectionID, Reason: fmt.Sprintf("same identity as record %d", j)}
			continue
		}
		seen[ik] = i
		val, rev, err := v.store.Get(ctx, ik)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("vault: read identity: %w", err)
		}
		if e := v.entry(string(val)); err == nil && e != nil {
			if r := e.res.Load(); r.status != StatusRevoked {
				out[i] = ImportResult{Outcome: ImportDuplicate, ConnectionID: e.id, Status: r.status}
				continue
			}
		}
		c := importedConnection(r, opts.CreatedBy, now)
		out[i] = ImportResult{Outcome: ImportValid, ConnectionID: c.ID, Status: StatusActive}
		if opts.DryRun {
			continue
		}
		todo = append(todo, pending{i: i, c: c, ik: ik, ikRev: rev})
	}
	if opts.DryRun || len(todo) == 0 {
		return out, nil
	}
	if opts.Verify {
		// A few at a time: each is one provider call.
		sem := make(chan struct{}, importVerifiers)
		var wg sync.WaitGroup
		for _, p := range todo {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				v.verifyImported(ctx, p.c)
			})
		}
		wg.Wait()
		for _, p := range todo {
			out[p.i].Status, out[p.i].Reason = p.c.Status, p.c.StatusReason
		}
	}

	// One write for the whole batch: records, identities and events.
	entries := make([]*entry, len(todo))
	var evs []Event
	var ops []Op
	for k, p := range todo {
		e := newEntry(p.c)
		entries[k] = e
		ev := changeEvents(nil, p.c, p.c.CreatedAt)
		for j := range ev {
			ev[j].Imported = true
		}
		evs = append(evs, ev...)
		key := connPrefix + p.c.ID
		plain, err := marshalRecord(p.c)
		if err != nil {
			return nil, fmt.Errorf("vault: encode %s: %w", p.c.ID, err)
		}
		sealed, err := v.kr.Seal(key, plain)
		if err != nil {
			return nil, fmt.Errorf("vault: seal %s: %w", p.c.ID, err)
		}
		ops = append(ops, Op{Key: key, Value: sealed, IfRev: 0}, Op{Key: p.ik, Value: []byte(p.c.ID), IfRev: int64(p.ikRev)})
	}
	revs, err := v.applyWithEvents(ctx, evs, ops)
	if errors.Is(err, ErrConflict) {
		// A connect flow for one of these identities raced the batch: the
		// batch wrote nothing. Import the records one at a time instead.
		return v.importOneByOne(ctx, recs, opts, out, todoIndexes(todo, func(p pending) int { return p.i }))
	}
	if err != nil {
		return nil, fmt.Errorf("vault: import: %w", err)
	}
	v.mu.Lock()
	for k, e := range entries {
		e.rev = revs[2*k]
		v.addEntry(e)
	}
	for _, e := range entries {
		v.ids = append(v.ids, e.id)
	}
	slices.Sort(v.ids)
	v.mu.Unlock()
	for k, p := range todo {
		e := entries[k]
		e.mu.Lock()
		v.publish(e, nil, p.c)
		e.mu.Unlock()
		out[p.i].Outcome = ImportImported
	}
	v.log.LogAttrs(ctx, slog.LevelInfo, "imported connections", slog.Int("count", len(todo)))
	return out, nil
}

func todoIndexes[T any](todo []T, index func(T) int) []int {
	out := make([]int, len(todo))
	for k, p := range todo {
		out[k] = index(p)
	}
	return out
}

// importOneByOne imports the records at indexes each in its own write,
// after a batch write conflicted.
func (v *Vault) importOneByOne(ctx context.Context, recs []ImportRecord, opts ImportOptions, out []ImportResult, indexes []int) ([]ImportResult, error) {
	for _, i := range indexes {
		res, err := v.Import(ctx, recs[i:i+1], opts)
		if err != nil {
			return nil, err
		}
		out[i] = res[0]
	}
	return out, nil
}

// importedConnection is the connection record of an import record that
// passed checkImport.
func importedConnection(r *ImportRecord, createdBy string, now time.Time) *Connection {
	g := Grant{Account: r.Account, Metadata: cloneMap(r.Metadata)}
	for _, t := range r.Tokens {
		t.Scopes = normalizeScopes(t.Scopes)
		if t.TokenType == "" || strings.EqualFold(t.TokenType, "bearer") {
			t.TokenType = "Bearer"
		}
		t.IssuedAt = now
		g.Tokens = append(g.Tokens, t)
		g.Scopes = append(g.Scopes, t.Scopes...)
	}
	g.Scopes = normalizeScopes(g.Scopes)
	requested := normalizeScopes(r.RequestedScopes)
	if len(requested) == 0 {
		requested = slices.Clone(g.Scopes)
	}
	c := &Connection{
		ID: "conn_" + strings.ToLower(rand.Text()[:20]), Owner: r.Owner, Tenant: r.Tenant,
		Provider: r.Provider, Label: r.Label, Purpose: r.Purpose,
		RequestedScopes: requested, CreatedAt: now, Grant: g, Connects: 1,
		AppMetadata: cloneMap(r.AppMetadata), CreatedBy: createdBy, Imported: true,
	}
	c.transition(now, StatusActive, "")
	return c
}

func cloneMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, val := range m {
		out[k] = val
	}
	return out
}

// verifyImported asks the provider once about c's grant, before it is
// stored: Validate where the provider can, else a refresh (whose new grant
// replaces the imported one). A grant the provider rejects moves c to
// needs_reauth with the provider's code; a provider that does not answer
// leaves c active, with the reason "unverified".
func (v *Vault) verifyImported(ctx context.Context, c *Connection) {
	p, err := v.provider(c.Provider)
	if err != nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, v.cfg.RefreshTimeout)
	defer cancel()
	now := v.now()
	var perr error
	switch vp, ok := p.(Validator); {
	case ok:
		perr = vp.Validate(rctx, c.Grant.clone())
		if perr == nil {
			c.LastValidatedAt = now
		}
	case c.Grant.Token("") != nil && c.Grant.Token("").RefreshToken != "":
		g, err := p.Refresh(rctx, c.Grant.clone(), "")
		perr = err
		if err == nil {
			for i := range g.Tokens {
				if g.Tokens[i].IssuedAt.IsZero() {
					g.Tokens[i].IssuedAt = now
				}
				v.assumeExpiry(c.Provider, &g.Tokens[i], now)
			}
			g.Scopes = normalizeScopes(g.Scopes)
			c.Grant = g
			c.LastRefreshedAt = now
		}
	default:
		return // nothing to ask without a refresh token: kept as imported
	}
	if perr == nil {
		return
	}
	pe := providerError(perr)
	if errors.Is(pe.Kind, ErrReauthRequired) {
		c.transition(now, StatusNeedsReauth, pe.Code)
		c.LastError = pe.Code
		return
	}
	v.log.LogAttrs(ctx, slog.LevelWarn, "could not verify an imported grant",
		slog.String("connection", c.ID), slog.String("provider", c.Provider), slog.String("code", pe.Code))
}

// checkImport returns why r cannot be imported ("" if it can). The reason
// names fields, never their values.
func (v *Vault) checkImport(r *ImportRecord, now time.Time) string {
	switch {
	case r.Owner == "":
		return "owner is required"
	case r.Provider == "":
		return "provider is required"
	}
	if _, err := v.provider(r.Provider); err != nil {
		if len(r.Provider) > 64 || !printable(r.Provider) {
			return "unknown provider"
		}
		return fmt.Sprintf("unknown provider %q", r.Provider)
	}
	size := 0
	for _, f := range []struct {
		name, val string
		max       int
	}{
		{"owner", r.Owner, maxImportIdent}, {"tenant", r.Tenant, maxImportIdent}, {"label", r.Label, maxImportIdent},
		{"account", r.Account, maxImportIdent}, {"purpose", r.Purpose, maxImportText},
	} {
		if len(f.val) > f.max || !printable(f.val) {
			return fmt.Sprintf("%s must be printable UTF-8 of at most %d bytes", f.name, f.max)
		}
		if f.name != "purpose" && looksLikeToken(f.val) {
			return fmt.Sprintf("%s looks like a token: tokens go in credentials", f.name)
		}
		size += len(f.val)
	}
	if len(r.Metadata) > maxImportMeta {
		return fmt.Sprintf("metadata has %d keys; at most %d", len(r.Metadata), maxImportMeta)
	}
	for k, val := range r.Metadata {
		if k == "" || len(k) > maxImportMetaKey || len(val) > maxImportMetaVal || !printable(k) || !printable(val) {
			return fmt.Sprintf("metadata keys are 1 to %d and values at most %d bytes of printable UTF-8", maxImportMetaKey, maxImportMetaVal)
		}
		if looksLikeToken(val) {
			return fmt.Sprintf("metadata %q looks like a token: tokens go in credentials", k)
		}
		size += len(k) + len(val)
	}
	if err := CheckAppMetadata(r.AppMetadata); err != nil {
		return strings.TrimPrefix(err.Error(), ErrInvalidArgument.Error()+": ")
	}
	for _, val := range r.AppMetadata {
		if looksLikeToken(val) {
			return "app_metadata value looks like a token: tokens go in credentials"
		}
	}
	if reason := checkScopes("requested_scopes", r.RequestedScopes); reason != "" {
		return reason
	}
	switch n := len(r.Tokens); {
	case n == 0:
		return "credentials: at least one is required"
	case n > maxImportTokens:
		return fmt.Sprintf("credentials: at most %d", maxImportTokens)
	}
	names := make(map[string]bool, len(r.Tokens))
	for i, t := range r.Tokens {
		what := fmt.Sprintf("credentials[%d]", i)
		switch {
		case names[t.Name]:
			return what + ": name used twice"
		case len(t.Name) > 32 || !printable(t.Name):
			return what + ": name must be at most 32 printable bytes"
		case t.AccessToken == "" && t.RefreshToken == "":
			return what + ": an access token or a refresh token is required"
		case len(t.AccessToken) > maxImportToken || len(t.RefreshToken) > maxImportToken:
			return fmt.Sprintf("%s: tokens are at most %d bytes", what, maxImportToken)
		case !tokenChars(t.AccessToken) || !tokenChars(t.RefreshToken):
			return what + ": tokens must be printable ASCII without spaces"
		case t.AccessToken != "" && t.AccessToken == t.RefreshToken:
			return what + ": access_token and refresh_token are the same value"
		case isRefreshToken(t.AccessToken):
			return what + ": access_token holds a refresh token"
		case isAccessToken(t.RefreshToken):
			return what + ": refresh_token holds an access token"
		case len(t.TokenType) > 32 || !printable(t.TokenType):
			return what + ": token_type must be at most 32 printable bytes"
		case t.RefreshToken == "" && !t.Expiry.IsZero() && !t.Expiry.After(now):
			return what + ": the access token has expired and there is no refresh token to renew it"
		}
		if reason := checkScopes(what+".scopes", t.Scopes); reason != "" {
			return reason
		}
		names[t.Name] = true
		size += len(t.AccessToken) + len(t.RefreshToken)
	}
	if !names[""] {
		return `credentials: one must be the primary credential (name "")`
	}
	if size > maxImportRecord {
		return fmt.Sprintf("the record is larger than %d bytes", maxImportRecord)
	}
	return ""
}

func checkScopes(what string, scopes []string) string {
	if len(scopes) > maxImportScopes {
		return fmt.Sprintf("%s: at most %d", what, maxImportScopes)
	}
	for _, s := range scopes {
		if len(s) > maxImportScope || !printable(s) {
			return fmt.Sprintf("%s: each at most %d printable bytes", what, maxImportScope)
		}
	}
	return ""
}

func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// tokenChars reports whether s could be a token: printable ASCII, no
// spaces (RFC 6749 appendix A's VSCHAR).
func tokenChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// The documented shapes of the tokens of the providers tokenvault ships
// (PROVIDERS.md), to catch a token in the wrong field of an import.
var (
	accessPrefixes  = []string{"xoxb-", "xoxp-", "xoxe.xoxb-", "xoxe.xoxp-", "gho_", "ghu_", "ghp_", "github_pat_", "ya29.", "lin_oauth_", "lin_api_"}
	refreshPrefixes = []string{"xoxe-1-", "ghr_", "1//"}
)

func isAccessToken(s string) bool {
	return slices.ContainsFunc(accessPrefixes, func(p string) bool { return strings.HasPrefix(s, p) })
}

func isRefreshToken(s string) bool {
	return slices.ContainsFunc(refreshPrefixes, func(p string) bool { return strings.HasPrefix(s, p) })
}

// looksLikeToken reports whether s, a value of a field that holds no
// secret, is shaped like a token: a known provider prefix, or a JWT.
func looksLikeToken(s string) bool {
	if isAccessToken(s) || isRefreshToken(s) {
		return true
	}
	if strings.HasPrefix(s, "eyJ") && strings.Count(s, ".") == 2 && len(s) > 40 {
		return true
	}
	return false
}
