package vault_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/bolt"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// clock is a settable clock shared by a test and its vault.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// fakeProvider is a hand-written provider with counters. Each refresh
// issues a new access token and rotates the refresh token.
type fakeProvider struct {
	clock    *clock
	lifetime time.Duration

	exchanges, refreshes, revokes atomic.Int32

	mu         sync.Mutex
	n          int
	refreshErr error
	revokeErr  error
	exchErr    error
	userToken  bool // Exchange also issues a "user" credential
	// stripIssued makes Refresh drop IssuedAt, as a real provider (which
	// knows nothing of it) does through the server's adapter.
	stripIssued bool
	block       chan struct{} // if set, Refresh waits for it to close
	entered     chan struct{} // if set, Refresh signals it on entry
	answered    func()        // if set, Refresh calls it before it answers
	// presented and revoked record the refresh tokens sent in Refresh and
	// Revoke calls.
	presented, revoked []string
}

func (p *fakeProvider) PKCE() bool { return true }

func (p *fakeProvider) AuthURL(r vault.AuthRequest) (string, error) {
	return "https://auth.example/authorize?state=" + url.QueryEscape(r.State), nil
}

func (p *fakeProvider) next() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return p.n
}

func (p *fakeProvider) Exchange(ctx context.Context, r vault.ExchangeRequest) (vault.Grant, error) {
	p.exchanges.Add(1)
	if p.exchErr != nil {
		return vault.Grant{}, p.exchErr
	}
	if r.Verifier == "" {
		return vault.Grant{}, errors.New("no PKCE verifier")
	}
	n := p.next()
	toks := []vault.Token{{
		AccessToken: fmt.Sprintf("at-%d", n), RefreshToken: fmt.Sprintf("rt-%d", n),
		TokenType: "Bearer", Expiry: p.clock.Now().Add(p.lifetime),
	}}
	if p.userToken {
		toks = append(toks, vault.Token{
			Name: "user", AccessToken: fmt.Sprintf("uat-%d", n), RefreshToken: fmt.Sprintf("urt-%d", n),
			TokenType: "Bearer", Expiry: p.clock.Now().Add(p.lifetime),
		})
	}
	return vault.Grant{
		Tokens:   toks,
		Scopes:   []string{"read"},
		Account:  "acct-1",
		Metadata: map[string]string{"team_id": "T1"},
	}, nil
}

func (p *fakeProvider) Refresh(ctx context.Context, g vault.Grant, cred string) (vault.Grant, error) {
	p.refreshes.Add(1)
	if p.entered != nil {
		p.entered <- struct{}{}
	}
	if p.block != nil {
		<-p.block
	}
	p.mu.Lock()
	err := p.refreshErr
	if t := g.Token(cred); t != nil {
		p.presented = append(p.presented, t.RefreshToken)
	}
	p.mu.Unlock()
	if p.answered != nil {
		defer p.answered()
	}
	if err != nil {
		return vault.Grant{}, err
	}
	if p.stripIssued {
		for i := range g.Tokens {
			g.Tokens[i].IssuedAt = time.Time{}
		}
	}
	n := p.next()
	t := g.Token(cred)
	t.AccessToken = fmt.Sprintf("at-%d", n)
	t.RefreshToken = fmt.Sprintf("rt-%d", n)
	t.Expiry = p.clock.Now().Add(p.lifetime)
	return g, nil
}

func (p *fakeProvider) setRefreshErr(err error) {
	p.mu.Lock()
	p.refreshErr = err
	p.mu.Unlock()
}

func (p *fakeProvider) Revoke(ctx context.Context, g vault.Grant) error {
	p.revokes.Add(1)
	if t := g.Token(""); t != nil {
		p.mu.Lock()
		p.revoked = append(p.revoked, t.RefreshToken)
		p.mu.Unlock()
	}
	return p.revokeErr
}

type harness struct {
	t      testing.TB
	v      *vault.Vault
	p      *fakeProvider
	clock  *clock
	store  *bolt.Store
	faults *faultyStore // the store the vault writes through
	path   string
	mk     seal.MasterKey
}

// faultyStore fails every Apply while full is set, as a store on a full
// disk does.
type faultyStore struct {
	vault.Store
	full atomic.Bool
}

func (s *faultyStore) Apply(ctx context.Context, ops ...vault.Op) ([]uint64, error) {
	if s.full.Load() {
		return nil, fmt.Errorf("bolt: commit: %w", syscall.ENOSPC)
	}
	return s.Store.Apply(ctx, ops...)
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	h := &harness{t: t, clock: newClock(), path: filepath.Join(t.TempDir(), "v.db")}
	h.p = &fakeProvider{clock: h.clock, lifetime: time.Hour}
	var err error
	if h.mk, err = seal.GenerateMasterKey(); err != nil {
		t.Fatal(err)
	}
	h.open()
	t.Cleanup(func() { h.store.Close() })
	return h
}

func (h *harness) open() { h.openWith(context.Background(), nil) }

// openWith opens h's store, its keyring and a vault on them with the
// harness's configuration, changed by edit if it is not nil.
func (h *harness) openWith(ctx context.Context, edit func(*vault.Config)) {
	h.t.Helper()
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	kr, err := vault.OpenKeyring(ctx, st, h.mk)
	if err != nil {
		h.t.Fatal(err)
	}
	h.faults = &faultyStore{Store: st}
	cfg := vault.Config{
		Store: h.faults, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p},
		ReturnTo: []string{"https://app.example/settings"}, Now: h.clock.Now,
		StartURL: func(flow string) string { return "https://tv.example/connect/start?flow=" + flow },
	}
	if edit != nil {
		edit(&cfg)
	}
	v, err := vault.Open(ctx, cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.store, h.v = st, v
}

func (h *harness) reopen() {
	h.t.Helper()
	h.store.Close()
	h.open()
}

// connect runs a connect flow through to the callback.
func (h *harness) connect(owner string) *vault.Connection {
	h.t.Helper()
	state := h.start(vault.ConnectRequest{Owner: owner, Provider: "fake", Scopes: []string{"read", "write"}})
	res, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: state, Code: "code"})
	if err != nil {
		h.t.Fatalf("CompleteConnect = %v", err)
	}
	return res.Connection
}

func (h *harness) start(r vault.ConnectRequest) string {
	h.t.Helper()
	if r.Binding == "" {
		r.Binding = "b" // the browser's binding hash, as the callback brings it
	}
	u, _, err := h.v.StartConnect(context.Background(), r)
	if err != nil {
		h.t.Fatalf("StartConnect = %v", err)
	}
	pu, _ := url.Parse(u)
	return pu.Query().Get("state")
}

func TestVault_AccessToken_ConcurrentAtExpiry_OneRefresh(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.clock.Add(time.Hour - time.Minute) // inside the default 5-minute min_valid
	const callers = 200
	var wg sync.WaitGroup
	toks := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
			toks[i], errs[i] = tok.AccessToken, err
		}()
	}
	wg.Wait()
	if got := h.p.refreshes.Load(); got != 1 {
		t.Errorf("provider refreshes = %d; want 1", got)
	}
	for i := range callers {
		if errs[i] != nil || toks[i] != "at-2" {
			t.Fatalf("caller %d: AccessToken = %q, %v; want at-2, nil", i, toks[i], errs[i])
		}
	}
}

func TestVault_AccessToken_Fresh_NoRefresh(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	tok, got, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID, MinValid: time.Minute})
	if err != nil || tok.AccessToken != "at-1" {
		t.Fatalf("AccessToken = %q, %v; want at-1", tok.AccessToken, err)
	}
	if h.p.refreshes.Load() != 0 {
		t.Errorf("refreshed a fresh token")
	}
	if want := []string{"write"}; fmt.Sprint(got.MissingScopes) != fmt.Sprint(want) {
		t.Errorf("MissingScopes = %v; want %v", got.MissingScopes, want)
	}
	if got.ConnectionID != c.ID || got.Provider != c.Provider || fmt.Sprint(got.GrantedScopes) != fmt.Sprint(c.Grant.Scopes) {
		t.Errorf("TokenInfo = %+v; want the connection's id, provider and scopes %v", got, c.Grant.Scopes)
	}
	if tok.RefreshToken != "" {
		t.Error("AccessToken handed out a refresh token")
	}
}

func TestVault_AccessToken_Errors(t *testing.T) {
	h := newHarness(t)
	_, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: "conn_nope"})
	if !errors.Is(err, vault.ErrNotFound) {
		t.Errorf("AccessToken(unknown) = %v; want ErrNotFound", err)
	}
	c := h.connect("alice")
	_, _, err = h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID, Credential: "user"})
	if !errors.Is(err, vault.ErrInvalidArgument) {
		t.Errorf("AccessToken(no such credential) = %v; want ErrInvalidArgument", err)
	}
}

func TestVault_Refresh_Rejected_NeedsReauthAndNoRetry(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"})
	h.clock.Add(2 * time.Hour)
	_, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if !errors.Is(err, vault.ErrReauthRequired) {
		t.Fatalf("AccessToken = %v; want ErrReauthRequired", err)
	}
	got, _ := h.v.Get(context.Background(), c.ID)
	if got.Status != vault.StatusNeedsReauth || got.StatusReason != "invalid_grant" {
		t.Errorf("status = %s/%s; want needs_reauth/invalid_grant", got.Status, got.StatusReason)
	}
	if n := len(got.Transitions); n < 2 || got.Transitions[n-1].To != vault.StatusNeedsReauth {
		t.Errorf("transitions = %+v; want the last to needs_reauth", got.Transitions)
	}
	for range 3 {
		if _, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID}); !errors.Is(err, vault.ErrReauthRequired) {
			t.Fatalf("AccessToken again = %v; want ErrReauthRequired", err)
		}
	}
	if n := h.p.refreshes.Load(); n != 1 {
		t.Errorf("provider refreshes = %d; want 1 (a dead grant is not retried)", n)
	}
	// Reconnecting keeps the id and returns to active.
	again := h.connect("alice")
	if again.ID != c.ID || again.Status != vault.StatusActive {
		t.Errorf("reconnect = %s/%s; want %s/active", again.ID, again.Status, c.ID)
	}
}

func TestVault_Refresh_Transient_ServesValidThenUnavailable(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503", RetryAfter: 30 * time.Second})
	h.clock.Add(time.Hour - 2*time.Minute) // valid for 2 more minutes, less than min_valid
	tok, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if err != nil || tok.AccessToken != "at-1" {
		t.Fatalf("AccessToken during outage = %q, %v; want the still-valid at-1", tok.AccessToken, err)
	}
	// Within the backoff window the provider is not called again.
	for range 5 {
		h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	}
	if n := h.p.refreshes.Load(); n != 1 {
		t.Errorf("provider refreshes during backoff = %d; want 1", n)
	}
	h.clock.Add(3 * time.Minute) // expired, and past Retry-After
	_, _, err = h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	var pe *vault.ProviderError
	if !errors.Is(err, vault.ErrUnavailable) || !errors.As(err, &pe) || pe.RetryAfter < 30*time.Second {
		t.Fatalf("AccessToken after expiry = %v; want ErrUnavailable with RetryAfter >= 30s", err)
	}
	got, _ := h.v.Get(context.Background(), c.ID)
	if got.Status != vault.StatusActive || got.Failures != 2 {
		t.Errorf("status %s failures %d; want active, 2", got.Status, got.Failures)
	}
	h.p.setRefreshErr(nil)
	h.clock.Add(20 * time.Minute)
	tok, _, err = h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if err != nil || tok.AccessToken != "at-2" {
		t.Fatalf("AccessToken after recovery = %q, %v; want at-2", tok.AccessToken, err)
	}
}

func TestVault_Refresh_Misconfigured(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.p.setRefreshErr(&vault.ProviderError{Kind: vault.ErrMisconfigured, Code: "invalid_client"})
	h.clock.Add(2 * time.Hour)
	_, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if !errors.Is(err, vault.ErrMisconfigured) {
		t.Fatalf("AccessToken = %v; want ErrMisconfigured", err)
	}
	got, _ := h.v.Get(context.Background(), c.ID)
	if got.Status != vault.StatusActive {
		t.Errorf("status = %s; want active: a configuration error is not the user's", got.Status)
	}
}

func TestVault_Refresh_CommittedBeforeServed(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.clock.Add(2 * time.Hour)
	tok, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if err != nil {
		t.Fatal(err)
	}
	// The rotated grant is durable: a fresh process sees it.
	h.reopen()
	got, err := h.v.Get(context.Background(), c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if at := got.Grant.Token("").AccessToken; at != tok.AccessToken {
		t.Errorf("after reopen access token = %q; want %q", at, tok.AccessToken)
	}
	if rt := got.Grant.Token("").RefreshToken; rt != "rt-2" {
		t.Errorf("after reopen refresh token = %q; want rt-2", rt)
	}
	if got.InFlight != nil {
		t.Errorf("in-flight marker left behind: %+v", got.InFlight)
	}
}

// TestVault_Refresh_FullDisk_KeepsTheGrant: the provider answered a
// refresh (rotating the refresh token) but the store could not commit it.
// The issued grant is neither served nor lost: the next attempt commits it
// without asking the provider again, so the retired refresh token is never
// presented.
func TestVault_Refresh_FullDisk_KeepsTheGrant(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	c := h.connect("alice")
	h.clock.Add(2 * time.Hour) // expired
	h.p.answered = func() { h.faults.full.Store(true) }
	for i := range 2 {
		_, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID})
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("AccessToken #%d on a full disk = %v; want the write error", i, err)
		}
		if strings.Contains(err.Error(), "rt-") || strings.Contains(err.Error(), "at-") {
			t.Errorf("the error %q names a token", err)
		}
	}
	if n := h.p.refreshes.Load(); n != 1 {
		t.Fatalf("the provider was asked %d times; want once, the grant it issued being kept", n)
	}
	h.p.answered = nil
	h.faults.full.Store(false)

	// Revocation goes through the kept grant: the provider is asked to
	// revoke the refresh token it issued last, not the retired one.
	tok, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID})
	if err != nil || tok.AccessToken != "at-2" {
		t.Fatalf("AccessToken once the disk has room = %q, %v; want the kept grant's at-2", tok.AccessToken, err)
	}
	if n := h.p.refreshes.Load(); n != 1 {
		t.Errorf("the provider was asked %d times; want once", n)
	}
	h.reopen()
	got, err := h.v.Get(ctx, c.ID)
	if err != nil || got.Grant.Token("").RefreshToken != "rt-2" || got.InFlight != nil {
		t.Fatalf("after reopen = %+v, %v; want rt-2 stored and no in-flight marker", got, err)
	}
	h.clock.Add(2 * time.Hour)
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"rt-1", "rt-2"}; !slices.Equal(h.p.presented, want) {
		t.Errorf("refresh tokens presented %q; want %q: none twice", h.p.presented, want)
	}
}

// TestVault_Revoke_AfterFullDisk: a revocation while a refreshed grant
// waits to be stored revokes that grant at the provider.
func TestVault_Revoke_AfterFullDisk(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	c := h.connect("alice")
	h.clock.Add(time.Minute)                              // past Refresh's debounce
	if _, err := h.v.Refresh(ctx, c.ID, ""); err != nil { // rt-2
		t.Fatal(err)
	}
	h.clock.Add(time.Minute)
	h.p.answered = func() { h.faults.full.Store(true) }
	if _, err := h.v.Refresh(ctx, c.ID, ""); !errors.Is(err, syscall.ENOSPC) { // rt-3, unsaved
		t.Fatalf("Refresh on a full disk = %v; want the write error", err)
	}
	if _, err := h.v.Revoke(ctx, c.ID, "user left"); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Revoke on a full disk = %v; want the write error, nothing revoked", err)
	}
	h.p.answered = nil
	h.faults.full.Store(false)
	res, err := h.v.Revoke(ctx, c.ID, "user left")
	if err != nil || res.Connection.Status != vault.StatusRevoked {
		t.Fatalf("Revoke = %+v, %v", res, err)
	}
	if want := []string{"rt-3"}; !slices.Equal(h.p.revoked, want) {
		t.Errorf("revoked at the provider: %q; want %q, the grant issued last", h.p.revoked, want)
	}
}

func TestVault_RecoverInterrupted(t *testing.T) {
	for _, tc := range []struct {
		name       string
		refreshErr error
		wantStatus vault.Status
		wantReason string
	}{
		{"provider accepts the old token", nil, vault.StatusActive, ""},
		{"provider rejects it", &vault.ProviderError{Kind: vault.ErrReauthRequired, Code: "invalid_grant"}, vault.StatusNeedsReauth, vault.ReasonRefreshInterrupted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			c := h.connect("alice")
			h.clock.Add(2 * time.Hour)
			// Crash after the marker is durable: copy the file while the
			// provider call is in progress.
			h.p.block, h.p.entered = make(chan struct{}), make(chan struct{}, 1)
			done := make(chan struct{})
			go func() {
				h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
				close(done)
			}()
			<-h.p.entered
			crashed := filepath.Join(t.TempDir(), "crashed.db")
			copyFile(t, h.path, crashed)
			close(h.p.block)
			<-done
			h.p.block, h.p.entered = nil, nil

			h.store.Close()
			h.path = crashed
			h.open()
			before, _ := h.v.Get(context.Background(), c.ID)
			if before.InFlight == nil {
				t.Fatal("crashed copy has no in-flight marker")
			}
			h.p.setRefreshErr(tc.refreshErr)
			calls := h.p.refreshes.Load()
			if _, err := h.v.RecoverInterrupted(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := h.p.refreshes.Load() - calls; n != 1 {
				t.Errorf("recovery refreshes = %d; want exactly 1", n)
			}
			got, _ := h.v.Get(context.Background(), c.ID)
			if got.Status != tc.wantStatus || got.StatusReason != tc.wantReason || got.InFlight != nil {
				t.Errorf("after recovery: %s/%q in-flight %v; want %s/%q, none", got.Status, got.StatusReason, got.InFlight, tc.wantStatus, tc.wantReason)
			}
			// Never a loop: recovering again does nothing.
			calls = h.p.refreshes.Load()
			h.v.RecoverInterrupted(context.Background())
			if n := h.p.refreshes.Load() - calls; n != 0 {
				t.Errorf("second recovery refreshes = %d; want 0", n)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestVault_Connect_StateIsSingleUse(t *testing.T) {
	h := newHarness(t)
	state := h.start(vault.ConnectRequest{Owner: "alice", Provider: "fake"})
	const n = 20
	var wg sync.WaitGroup
	var ok, invalid atomic.Int32
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: state, Code: "code"})
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, vault.ErrInvalidState):
				invalid.Add(1)
			default:
				t.Errorf("CompleteConnect = %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || invalid.Load() != n-1 || h.p.exchanges.Load() != 1 {
		t.Errorf("ok %d invalid %d exchanges %d; want 1, %d, 1", ok.Load(), invalid.Load(), h.p.exchanges.Load(), n-1)
	}
}

func TestVault_Connect_BadCallbacks(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name    string
		state   func() string
		prov    string
		errCode string
		advance time.Duration
		want    error
	}{
		{"forged state", func() string { return "forged" }, "fake", "", 0, vault.ErrInvalidState},
		{"empty state", func() string { return "" }, "fake", "", 0, vault.ErrInvalidState},
		{"expired", func() string { return h.start(vault.ConnectRequest{Owner: "a", Provider: "fake"}) }, "fake", "", 11 * time.Minute, vault.ErrInvalidState},
		{"access denied", func() string { return h.start(vault.ConnectRequest{Owner: "a", Provider: "fake"}) }, "fake", "access_denied", 0, vault.ErrConsentDenied},
		{"other provider's callback", func() string { return h.start(vault.ConnectRequest{Owner: "a", Provider: "fake"}) }, "slack", "", 0, vault.ErrInvalidState},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := tc.state()
			h.clock.Add(tc.advance)
			_, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: tc.prov, State: state, Code: "code", Error: tc.errCode})
			if !errors.Is(err, tc.want) {
				t.Errorf("CompleteConnect = %v; want %v", err, tc.want)
			}
		})
	}
	if n := h.p.exchanges.Load(); n != 0 {
		t.Errorf("exchanges = %d; want 0: a bad callback makes no token request", n)
	}
}

func TestVault_StartConnect_Validation(t *testing.T) {
	h := newHarness(t)
	for _, tc := range []struct {
		name string
		req  vault.ConnectRequest
		want error
	}{
		{"no owner", vault.ConnectRequest{Provider: "fake"}, vault.ErrInvalidArgument},
		{"unknown provider", vault.ConnectRequest{Owner: "a", Provider: "nope"}, vault.ErrUnknownProvider},
		{"return_to elsewhere", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://evil.example/settings"}, vault.ErrReturnToNotAllowed},
		{"return_to sibling path", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settingsx"}, vault.ErrReturnToNotAllowed},
		{"return_to dot-dot", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/../admin"}, vault.ErrReturnToNotAllowed},
		{"return_to encoded dot-dot", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/%2e%2e/%2e%2e/logout"}, vault.ErrReturnToNotAllowed},
		{"return_to upper-case encoded dot-dot", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/%2E%2E/logout"}, vault.ErrReturnToNotAllowed},
		{"return_to half-encoded dot-dot", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/.%2e/logout"}, vault.ErrReturnToNotAllowed},
		{"return_to trailing dot-dot", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/%2e%2e"}, vault.ErrReturnToNotAllowed},
		{"return_to dot segment", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/./x"}, vault.ErrReturnToNotAllowed},
		{"return_to encoded slash", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings%2f..%2fadmin"}, vault.ErrReturnToNotAllowed},
		{"return_to backslash", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/..%5cadmin"}, vault.ErrReturnToNotAllowed},
		{"return_to http downgrade", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "http://app.example/settings"}, vault.ErrReturnToNotAllowed},
		{"return_to userinfo", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example@evil.example/settings"}, vault.ErrReturnToNotAllowed},
		{"return_to allowed", vault.ConnectRequest{Owner: "a", Provider: "fake", ReturnTo: "https://app.example/settings/slack?x=1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.Binding = "b"
			_, _, err := h.v.StartConnect(context.Background(), tc.req)
			if !errors.Is(err, tc.want) {
				t.Errorf("StartConnect = %v; want %v", err, tc.want)
			}
		})
	}
}

func TestVault_Revoke(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	h.p.revokeErr = &vault.ProviderError{Kind: vault.ErrUnavailable, Code: "http_503"}
	res, err := h.v.Revoke(context.Background(), c.ID, "user left")
	if err != nil {
		t.Fatal(err)
	}
	if res.ProviderErr == nil {
		t.Error("ProviderErr = nil; want the provider's failure reported")
	}
	if res.Connection.Status != vault.StatusRevoked || len(res.Connection.Grant.Tokens) != 0 {
		t.Errorf("after revoke: status %s, %d tokens; want revoked, 0", res.Connection.Status, len(res.Connection.Grant.Tokens))
	}
	// Idempotent, and calls the provider no more.
	if _, err := h.v.Revoke(context.Background(), c.ID, ""); err != nil {
		t.Errorf("second Revoke = %v", err)
	}
	if n := h.p.revokes.Load(); n != 1 {
		t.Errorf("provider revokes = %d; want 1", n)
	}
	if _, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID}); !errors.Is(err, vault.ErrRevoked) {
		t.Errorf("AccessToken after revoke = %v; want ErrRevoked", err)
	}
	// Token material is gone from disk too.
	h.reopen()
	got, _ := h.v.Get(context.Background(), c.ID)
	if len(got.Grant.Tokens) != 0 || got.Status != vault.StatusRevoked {
		t.Errorf("after reopen: %d tokens, %s", len(got.Grant.Tokens), got.Status)
	}
	// Connecting again after a revoke makes a new connection.
	if again := h.connect("alice"); again.ID == c.ID {
		t.Errorf("connect after revoke reused id %s", c.ID)
	}
}

func TestVault_List_FiltersAndPages(t *testing.T) {
	h := newHarness(t)
	for i := range 7 {
		h.connect(fmt.Sprintf("user-%d", i%2))
	}
	// Same owner and provider reconnect to one connection: 2 connections.
	all, next, err := h.v.List(context.Background(), vault.Filter{}, "", 100)
	if err != nil || len(all) != 2 || next != "" {
		t.Fatalf("List = %d, %q, %v; want 2 connections", len(all), next, err)
	}
	for i := range 5 {
		h.connectLabel(fmt.Sprintf("label-%d", i))
	}
	var seen []string
	after := ""
	for {
		page, next, err := h.v.List(context.Background(), vault.Filter{Owner: "bob"}, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page {
			seen = append(seen, c.ID)
		}
		if next == "" {
			break
		}
		after = next
	}
	if len(seen) != 5 {
		t.Errorf("paged List(owner=bob) = %d connections; want 5", len(seen))
	}
}

func (h *harness) connectLabel(label string) {
	h.t.Helper()
	state := h.start(vault.ConnectRequest{Owner: "bob", Provider: "fake", Label: label})
	if _, err := h.v.CompleteConnect(context.Background(), vault.CallbackRequest{Binding: "b", Provider: "fake", State: state, Code: "code"}); err != nil {
		h.t.Fatal(err)
	}
}

func TestVault_RotateKeys_ServesThroughout(t *testing.T) {
	h := newHarness(t)
	c := h.connect("alice")
	term, n, err := h.v.RotateKeys(context.Background())
	if err != nil || term != 2 || n < 1 {
		t.Fatalf("RotateKeys = %d, %d, %v; want term 2, >= 1 rewrapped", term, n, err)
	}
	tok, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID})
	if err != nil || tok.AccessToken != "at-1" {
		t.Fatalf("AccessToken after rotation = %q, %v", tok.AccessToken, err)
	}
	// A write after the re-wrap pass (which changed the revision) still
	// commits: the vault re-reads before writing.
	h.clock.Add(2 * time.Hour)
	if _, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID}); err != nil {
		t.Fatalf("refresh after rotation = %v", err)
	}
	h.reopen()
	if _, err := h.v.Get(context.Background(), c.ID); err != nil {
		t.Fatal(err)
	}
}

func TestVault_WrongMasterKey_RefusesAndWritesNothing(t *testing.T) {
	h := newHarness(t)
	h.connect("alice")
	h.store.Close()
	before, _ := os.ReadFile(h.path)
	st, err := bolt.Open(h.path, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := seal.GenerateMasterKey()
	if _, err := vault.OpenKeyring(context.Background(), st, other); !errors.Is(err, seal.ErrWrongMasterKey) {
		t.Errorf("OpenKeyring(wrong key) = %v; want ErrWrongMasterKey", err)
	}
	st.Close()
	after, _ := os.ReadFile(h.path)
	if string(before) != string(after) {
		t.Error("the data file changed after a refused start")
	}
	h.open()
}

// TestVault_AccessToken_Cached_NoAllocation: a token served from memory
// costs no allocation (the race detector's instrumentation allocates; the
// count is checked without it).
func TestVault_AccessToken_Cached_NoAllocation(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	h := newHarness(t)
	c := h.connect("alice")
	ctx := context.Background()
	if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID}); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if _, _, err := h.v.AccessToken(ctx, vault.TokenRequest{ID: c.ID, MinValid: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("AccessToken from memory allocated %v times a call; want 0", n)
	}
}

func BenchmarkVault_AccessToken_Cached(b *testing.B) {
	h := newHarness(b)
	c := h.connect("alice")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: c.ID}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestVault_Refresh_OneCredential_KeepsTheOthersIssuedAt(t *testing.T) {
	h := newHarness(t)
	h.p.userToken, h.p.stripIssued = true, true
	c := h.connect("alice")
	issued := c.Grant.Token("").IssuedAt
	if issued.IsZero() {
		t.Fatal("connect left IssuedAt zero")
	}
	h.clock.Add(time.Minute)
	got, err := h.v.Refresh(context.Background(), c.ID, "user")
	if err != nil {
		t.Fatal(err)
	}
	if at := got.Grant.Token("").IssuedAt; !at.Equal(issued) {
		t.Errorf("bot token IssuedAt after refreshing the user token = %v; want %v", at, issued)
	}
	if at := got.Grant.Token("user").IssuedAt; !at.Equal(h.clock.Now()) {
		t.Errorf("user token IssuedAt = %v; want %v", at, h.clock.Now())
	}
}

// Open decodes records in batches (256 to a batch, opened into one buffer
// per batch): every one of several batches' records comes back whole, and a
// record sealed for another connection's key stops the start.
func TestOpen_ManyRecords_AndAMovedOne(t *testing.T) {
	h := newHarness(t)
	const n = 600
	want := map[string]string{} // id -> owner
	for i := range n {
		c := h.connect("user-" + strconv.Itoa(i))
		want[c.ID] = c.Owner
	}
	h.reopen()
	if h.v.Len() != n {
		t.Fatalf("Len() = %d after reopening; want %d", h.v.Len(), n)
	}
	var ids []string
	for id, owner := range want {
		ids = append(ids, id)
		tok, info, err := h.v.AccessToken(context.Background(), vault.TokenRequest{ID: id, MinValid: time.Minute})
		if err != nil || tok.AccessToken == "" || info.ConnectionID != id {
			t.Fatalf("AccessToken(%s) after reopening = %q, %+v, %v", id, tok.AccessToken, info, err)
		}
		c, err := h.v.Get(context.Background(), id) // read from the store
		if err != nil || c.Owner != owner {
			t.Fatalf("Get(%s) = %+v, %v; want owner %s", id, c, err, owner)
		}
		if stored := c.Grant.Token(""); stored == nil || tok.AccessToken != stored.AccessToken || len(c.Grant.Tokens) != 1 {
			t.Fatalf("AccessToken(%s) after reopening = %q; the stored record has %+v", id, tok.AccessToken, c.Grant.Tokens)
		}
	}
	if got := h.p.refreshes.Load(); got != 0 {
		t.Errorf("%d refreshes; the tokens were fresh", got)
	}

	// Move one sealed record over another's key.
	ctx := context.Background()
	val, _, err := h.store.Get(ctx, "conn/"+ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.store.Apply(ctx, vault.Op{Key: "conn/" + ids[1], Value: val, IfRev: -1}); err != nil {
		t.Fatal(err)
	}
	h.store.Close()
	st, err := bolt.Open(h.path, bolt.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kr, err := vault.OpenKeyring(ctx, st, h.mk)
	if err != nil {
		t.Fatal(err)
	}
	// The moved record is quarantined; every other one is served.
	v, err := vault.Open(ctx, vault.Config{Store: st, Keyring: kr, Providers: map[string]vault.Provider{"fake": h.p}})
	if err != nil {
		t.Fatalf("Open with a moved record = %v; want the others served", err)
	}
	if v.Len() != n-1 || v.UnreadableCount() != 1 {
		t.Fatalf("Len() = %d, UnreadableCount() = %d; want %d and 1", v.Len(), v.UnreadableCount(), n-1)
	}
	_, _, err = v.AccessToken(ctx, vault.TokenRequest{ID: ids[1]})
	var ue *vault.UnreadableError
	if !errors.Is(err, vault.ErrRecordUnreadable) || !errors.As(err, &ue) || ue.Reason != seal.BrokenAuth {
		t.Fatalf("AccessToken(moved) = %v; want ErrRecordUnreadable (%s)", err, seal.BrokenAuth)
	}
	if _, _, err := v.AccessToken(ctx, vault.TokenRequest{ID: ids[0]}); err != nil {
		t.Fatalf("AccessToken(original) = %v", err)
	}
	if u := v.Unreadable(); len(u) != 1 || u[0].Key != "conn/"+ids[1] || u[0].ConnectionID != ids[1] {
		t.Fatalf("Unreadable() = %+v; want conn/%s", u, ids[1])
	}
}
