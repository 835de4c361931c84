// Package connectpage serves the connect page on the sidecar's public
// listener: the end user sees the application's providers, which of them
// are connected, and connects, reconnects or disconnects them, in a full
// page, a popup or an iframe. It also serves the start URL that binds every
// connect flow to the browser that began it (RFC 9700 §4.7), and the pages
// the OAuth callback shows.
//
// It knows nothing of the vault's storage: it calls a Backend, which the
// server implements over the vault.
package connectpage

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// Errors a Backend returns, which the page turns into its own pages.
var (
	// ErrSessionInvalid: the session token is unknown, forged or expired.
	ErrSessionInvalid = errors.New("connectpage: connect session invalid or expired")
	// ErrFlowInvalid: a start URL's flow is unknown, expired, or was
	// already started in a browser.
	ErrFlowInvalid = errors.New("connectpage: connect flow invalid, expired or already started")
	// ErrNotAllowed: the session does not allow this action (a provider
	// outside its subset, Disconnect without allow_disconnect, another
	// owner's connection).
	ErrNotAllowed = errors.New("connectpage: not allowed by this connect session")
)

// A Session is a connect session: what one page link may do, for whom.
type Session struct {
	// ID identifies the session without being its token (the token's
	// hash): rate limits and logs use it.
	ID              string
	Owner, Tenant   string
	Providers       []string // empty: every configured provider
	ReturnTo        string   // where "Back to the application" goes; may be empty
	AllowDisconnect bool
	Expires         time.Time
	// AppMetadata and CreatedBy go onto the connections the session's
	// flows create: the application's labels and its credential.
	AppMetadata map[string]string
	CreatedBy   string
}

// A Connection is what the page shows of one of the owner's connections.
type Connection struct {
	ID, Provider, Label string
	Account             string
	NeedsReauth         bool
	Reason              string    // why it needs reconnecting (a vault reason code)
	Since               time.Time // when it became what it is
}

// ConnectRequest starts a flow from the page.
type ConnectRequest struct {
	Provider string
	// ConnectionID, if set, is the connection to reconnect: the flow gets
	// its label so that the new grant keeps its id.
	ConnectionID string
	// Binding is the hash of the browser secret (BindingHash): the
	// callback completes only in a browser holding that secret.
	Binding string
	// ReturnTo is where the callback sends the browser: the page again.
	ReturnTo string
}

// A Backend is what the page needs of the vault. Every method acting for a
// session acts for its owner only.
type Backend interface {
	// Session returns the session whose token is token, or ErrSessionInvalid.
	Session(ctx context.Context, token string) (Session, error)
	// Connections returns s's owner's connections that are not revoked, at
	// s's providers.
	Connections(ctx context.Context, s Session) ([]Connection, error)
	// Connect starts a flow for s's owner, bound to r.Binding, and returns
	// the provider's authorization URL.
	Connect(ctx context.Context, s Session, r ConnectRequest) (string, error)
	// Begin binds the flow of a start URL (from StartConnect) to the
	// browser whose secret hashes to binding and returns the provider's
	// authorization URL. A flow binds once: ErrFlowInvalid after that.
	Begin(ctx context.Context, flow, binding string) (string, error)
	// Disconnect revokes the owner's connection id at the provider.
	Disconnect(ctx context.Context, s Session, connectionID string) error
}

// Provider is how the page presents one provider.
type Provider struct {
	Name        string // the configured name
	DisplayName string
	Purpose     string // why the application asks, in the application's words
	// Scopes are the requested scopes in words; Scope.Name is the raw one.
	Scopes []Scope
	// Icon is an image file (SVG or PNG) served at /connect/icons/<name>;
	// nil draws a monogram.
	Icon     []byte
	IconType string
	// Color fills the monogram; default: the theme colour.
	Color string
}

// Scope is a requested scope with the words the page shows for it.
type Scope struct{ Name, Words string }

// Config configures the page.
type Config struct {
	// PublicURL is the public listener's URL as browsers see it, without
	// a trailing slash: links, the Origin check and cookies' Secure flag
	// (https) derive from it.
	PublicURL string
	AppName   string
	// Logo is an image file (SVG or PNG) shown in the header; LogoType is
	// its media type.
	Logo     []byte
	LogoType string
	// ThemeColor is #rrggbb; see ParseTheme.
	ThemeColor string
	// PopupOrigins are the exact origins (scheme://host[:port]) the page
	// in a popup posts its result to. None: popup mode delivers nothing.
	PopupOrigins []string
	// FrameAncestors are the origins allowed to show the page in an
	// iframe. None: framing is refused.
	FrameAncestors []string
	// FormOrigins are the providers' authorization endpoints' origins:
	// the page's forms are redirected there (CSP form-action).
	FormOrigins []string
	Providers   []Provider
	Logger      *slog.Logger
	// Limits bound requests per client address and per session; zero
	// values take the defaults (DefaultLimits).
	Limits Limits
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Handler serves the connect page under /connect/. Register it with
// Register.
type Handler struct {
	cfg       Config
	b         Backend
	log       *slog.Logger
	theme     Theme
	secure    bool
	origin    string // the public origin, for the Origin check
	providers map[string]*Provider
	order     []string
	limits    *limiter
}

// New checks cfg and returns a Handler over b.
func New(cfg Config, b Backend) (*Handler, error) {
	pu, err := url.Parse(cfg.PublicURL)
	if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
		return nil, fmt.Errorf("connect page: public URL %q must be an absolute http(s) URL", cfg.PublicURL)
	}
	theme, err := ParseTheme(cfg.ThemeColor)
	if err != nil {
		return nil, fmt.Errorf("connect page: theme_color: %w", err)
	}
	for _, list := range [][]string{cfg.PopupOrigins, cfg.FrameAncestors, cfg.FormOrigins} {
		for _, o := range list {
			if err := checkOrigin(o); err != nil {
				return nil, fmt.Errorf("connect page: %w", err)
			}
		}
	}
	for _, t := range []string{cfg.LogoType} {
		if len(cfg.Logo) > 0 && !imageType(t) {
			return nil, fmt.Errorf("connect page: logo type %q: want image/svg+xml or image/png", t)
		}
	}
	if cfg.AppName == "" {
		cfg.AppName = "this application"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{
		cfg: cfg, b: b, log: cfg.Logger, theme: theme, secure: pu.Scheme == "https",
		origin: pu.Scheme + "://" + pu.Host, providers: map[string]*Provider{},
		limits: newLimiter(cfg.Limits.withDefaults(), cfg.Now),
	}
	for i := range cfg.Providers {
		p := &cfg.Providers[i]
		if len(p.Icon) > 0 && !imageType(p.IconType) {
			return nil, fmt.Errorf("connect page: provider %q icon type %q: want image/svg+xml or image/png", p.Name, p.IconType)
		}
		if p.DisplayName == "" {
			p.DisplayName = p.Name
		}
		if p.Color == "" {
			p.Color = theme.Accent
		}
		if _, err := parseHex(p.Color); err != nil {
			return nil, fmt.Errorf("connect page: provider %q: %w", p.Name, err)
		}
		h.providers[p.Name] = p
		h.order = append(h.order, p.Name)
	}
	return h, nil
}

func imageType(t string) bool { return t == "image/svg+xml" || t == "image/png" }

func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("origin %q: want scheme://host[:port], nothing more", o)
	}
	return nil
}

// Paths the page serves, under the public listener.
const (
	PathPrefix = "/connect/"
	pathStart  = "/connect/start"
)

// StartURL returns the start URL of an API flow (StartConnect's
// authorization_url): opening it binds the flow to the browser.
func StartURL(publicURL, flow string) string {
	return strings.TrimSuffix(publicURL, "/") + pathStart + "?" + url.Values{"flow": {flow}}.Encode()
}

// SessionURL returns the link to the page for a session token.
func SessionURL(publicURL, token string) string {
	return strings.TrimSuffix(publicURL, "/") + "/connect/s/" + url.PathEscape(token)
}

// Register mounts the page's routes on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /connect/{$}", h.page)
	mux.HandleFunc("GET /connect/s/{token}", h.open)
	mux.HandleFunc("POST /connect/connect", h.connect)
	mux.HandleFunc("POST /connect/disconnect", h.disconnect)
	mux.HandleFunc("GET /connect/start", h.start)
	mux.HandleFunc("GET /connect/embed.js", h.asset("embed.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /connect/page.js", h.asset("page.js", "text/javascript; charset=utf-8"))
	mux.HandleFunc("GET /connect/connect.css", h.asset("connect.css", "text/css; charset=utf-8"))
	mux.HandleFunc("GET /connect/logo", h.logo)
	mux.HandleFunc("GET /connect/favicon.svg", h.favicon)
	mux.HandleFunc("GET /connect/icons/{name}", h.icon)
	mux.HandleFunc("/connect/", func(w http.ResponseWriter, r *http.Request) {
		h.render(w, r, http.StatusNotFound, view{Title: "Page not found", Message: "There is nothing at this address."})
	})
}

//go:embed assets
var assets embed.FS

// tmpl parses the page templates on first use, not in every process's
// start (a bad template is a programming error the tests catch).
var tmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("").Funcs(template.FuncMap{
		"monogram": monogram,
	}).ParseFS(assets, "assets/*.html"))
})

// view is what the templates render.
type view struct {
	Nonce   string
	App     string
	Logo    bool
	Theme   Theme
	Title   string
	Message string
	// Retry, if set, is a link that starts over (the page again, or the
	// application).
	Retry, RetryText string

	// The page proper.
	Page      bool
	Mode      string // "", "popup" or "iframe"
	CSRF      string
	ReturnTo  string
	Banner    *banner
	Providers []providerView
	Result    *result // popup/iframe: posted to the opener by page.js
	Origins   string  // space-separated exact target origins for page.js
	Parents   string  // iframe: the frame ancestors page.js tells
}

type providerView struct {
	*Provider
	HasIcon     bool
	Connections []connView
	CanConnect  bool // no connection yet
}

type connView struct {
	Connection
	When   string
	Reason string
	Stamp  string // RFC 3339, for <time datetime>
	CanDis bool
}

type banner struct {
	Kind, Text string // Kind: ok, warn, error
}

type result struct {
	Provider, ConnectionID, Status string
}

func (h *Handler) render(w http.ResponseWriter, r *http.Request, status int, v view) {
	v.Nonce = nonce()
	v.App = h.cfg.AppName
	v.Logo = len(h.cfg.Logo) > 0
	v.Theme = h.theme
	h.securityHeaders(w, v.Nonce)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	if err := tmpl().ExecuteTemplate(w, "page.html", v); err != nil {
		h.log.LogAttrs(r.Context(), slog.LevelError, "connect page: render", slog.String("err", err.Error()))
	}
}

// RenderError renders one of the page's message pages (the callback's
// outcome, an expired link), with the page's headers.
func (h *Handler) RenderError(w http.ResponseWriter, r *http.Request, status int, title, message, retry, retryText string) {
	h.render(w, r, status, view{Title: title, Message: message, Retry: retry, RetryText: retryText})
}

// mode reads the page's embedding mode from the request.
func mode(r *http.Request) string {
	switch m := r.FormValue("mode"); m {
	case "popup", "iframe":
		return m
	}
	return ""
}

// open redeems a session link: the token moves into an HttpOnly cookie
// and the browser goes on to /connect/, so the token leaves the address bar
// and the history.
func (h *Handler) open(w http.ResponseWriter, r *http.Request) {
	if !h.limits.allow(w, "addr:"+clientAddr(r)) {
		h.tooMany(w, r)
		return
	}
	tok := r.PathValue("token")
	s, err := h.b.Session(r.Context(), tok)
	if err != nil {
		h.sessionFailed(w, r, err)
		return
	}
	http.SetCookie(w, h.cookie(sessionCookie, tok, s.Expires))
	h.redirect(w, r, h.pageURL(mode(r), nil))
}

// session reads the request's session from its cookie.
func (h *Handler) session(r *http.Request) (Session, string, error) {
	c, err := r.Cookie(h.cookieName(sessionCookie))
	if err != nil || c.Value == "" {
		return Session{}, "", ErrSessionInvalid
	}
	s, err := h.b.Session(r.Context(), c.Value)
	return s, c.Value, err
}

func (h *Handler) sessionFailed(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrSessionInvalid) {
		h.render(w, r, http.StatusUnauthorized, view{Title: "This link has expired",
			Message: "Links to this page work for a limited time. Go back to the application and open the page again from there."})
		return
	}
	h.internal(w, r, "session", err)
}

func (h *Handler) internal(w http.ResponseWriter, r *http.Request, what string, err error) {
	h.log.LogAttrs(r.Context(), slog.LevelError, "connect page failed", slog.String("step", what), slog.String("err", err.Error()))
	h.render(w, r, http.StatusInternalServerError, view{Title: "Something went wrong",
		Message: "The page could not be shown. Try again in a moment.", Retry: PathPrefix, RetryText: "Try again"})
}

func (h *Handler) tooMany(w http.ResponseWriter, r *http.Request) {
	h.render(w, r, http.StatusTooManyRequests, view{Title: "Too many attempts",
		Message: "Wait a minute, then try again."})
}

// visible returns the providers s may use, in the configured order.
func (h *Handler) visible(s Session) []string {
	if len(s.Providers) == 0 {
		return h.order
	}
	var out []string
	for _, n := range h.order {
		if slices.Contains(s.Providers, n) {
			out = append(out, n)
		}
	}
	return out
}

func (h *Handler) page(w http.ResponseWriter, r *http.Request) {
	s, tok, err := h.session(r)
	if err != nil {
		h.sessionFailed(w, r, err)
		return
	}
	conns, err := h.b.Connections(r.Context(), s)
	if err != nil {
		h.internal(w, r, "connections", err)
		return
	}
	m := mode(r)
	v := view{Page: true, Mode: m, CSRF: csrfToken(tok), ReturnTo: s.ReturnTo, Title: "Connected accounts"}
	for _, name := range h.visible(s) {
		p := h.providers[name]
		pv := providerView{Provider: p, HasIcon: len(p.Icon) > 0}
		for _, c := range conns {
			if c.Provider != name {
				continue
			}
			pv.Connections = append(pv.Connections, connView{Connection: c, When: when(c.Since),
				Stamp: c.Since.UTC().Format(time.RFC3339), Reason: ReasonWords(c.Reason), CanDis: s.AllowDisconnect})
		}
		pv.CanConnect = len(pv.Connections) == 0
		v.Providers = append(v.Providers, pv)
	}
	q := r.URL.Query()
	if p, ok := h.providers[q.Get("provider")]; ok && slices.Contains(h.visible(s), p.Name) {
		st := q.Get("status")
		if b := bannerFor(p.DisplayName, st); b != nil {
			v.Banner = b
			if m != "" {
				v.Result = &result{Provider: p.Name, Status: st, ConnectionID: connectionOf(conns, q.Get("connection_id"), p.Name)}
			}
		}
	}
	switch m {
	case "popup":
		v.Origins = strings.Join(append(slices.Clone(h.cfg.PopupOrigins), h.origin), " ")
	case "iframe":
		v.Parents = strings.Join(h.cfg.FrameAncestors, " ")
	}
	h.render(w, r, http.StatusOK, v)
}

// connectionOf returns id if it is one of conns at provider (the result
// posted to the opener names only the owner's own connections).
func connectionOf(conns []Connection, id, provider string) string {
	for _, c := range conns {
		if c.ID == id && c.Provider == provider {
			return id
		}
	}
	return ""
}

// Statuses the callback sends the browser back to the page with.
const (
	StatusConnected    = "connected"
	StatusReconnected  = "reconnected"
	StatusDisconnected = "disconnected"
	StatusDenied       = "denied"
	StatusFailed       = "failed"
	StatusUnavailable  = "unavailable"
)

func bannerFor(name, status string) *banner {
	switch status {
	case StatusConnected:
		return &banner{"ok", name + " is connected."}
	case StatusReconnected:
		return &banner{"ok", name + " is reconnected."}
	case StatusDisconnected:
		return &banner{"ok", name + " is disconnected."}
	case StatusDenied:
		return &banner{"warn", "You did not allow access to " + name + ", so nothing was connected. You can try again."}
	case StatusFailed:
		return &banner{"error", name + " did not complete the connection. Try again; if it keeps failing, tell the application's support."}
	case StatusUnavailable:
		return &banner{"error", name + " could not be reached. Try again in a moment."}
	}
	return nil
}

// ReasonWords says in plain words why a connection needs reconnecting.
func ReasonWords(reason string) string {
	switch reason {
	case "token_expired":
		return "Its access expired and cannot be renewed without you."
	case "refresh_interrupted":
		return "Renewing its access was interrupted, and the service no longer accepts the old one."
	case "invalid_grant", "token_revoked", "invalid_token", "unauthorized", "revoked", "inactive":
		return "The service no longer accepts it: access was removed there, or it expired."
	case "missing_scopes", "insufficient_scope":
		return "It does not have all the access this application needs."
	case "":
		return "The service stopped accepting it."
	}
	return "The service stopped accepting it (" + reason + ")."
}

// when formats a time for people: the date and time in UTC.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2 Jan 2006, 15:04 UTC")
}

func (h *Handler) pageURL(m string, q url.Values) string {
	if q == nil {
		q = url.Values{}
	}
	if m != "" {
		q.Set("mode", m)
	}
	u := PathPrefix
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// ReturnURL is the absolute URL the callback sends the browser to after a
// flow started on the page: the page, with the outcome.
func (h *Handler) ReturnURL(m string) string {
	return h.origin + h.pageURL(m, nil)
}

// Outcome adds a flow's outcome to a page URL from ReturnURL.
func Outcome(pageURL, provider, status, connectionID string) string {
	u, err := url.Parse(pageURL)
	if err != nil {
		return pageURL
	}
	q := u.Query()
	q.Set("provider", provider)
	q.Set("status", status)
	if connectionID != "" {
		q.Set("connection_id", connectionID)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// IsPageURL reports whether u is a URL from ReturnURL.
func (h *Handler) IsPageURL(u string) bool {
	pu, err := url.Parse(u)
	return err == nil && pu.Scheme+"://"+pu.Host == h.origin && pu.Path == PathPrefix
}

// post checks a state-changing request: same origin, a CSRF token bound
// to the session, the rate limits. It writes the refusal itself.
func (h *Handler) post(w http.ResponseWriter, r *http.Request) (Session, bool) {
	if !h.limits.allow(w, "addr:"+clientAddr(r)) {
		h.tooMany(w, r)
		return Session{}, false
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		h.render(w, r, http.StatusBadRequest, view{Title: "Bad request", Message: "The form could not be read.", Retry: PathPrefix, RetryText: "Back to the page"})
		return Session{}, false
	}
	if !sameOrigin(r, h.origin) {
		h.forbidden(w, r)
		return Session{}, false
	}
	s, tok, err := h.session(r)
	if err != nil {
		h.sessionFailed(w, r, err)
		return Session{}, false
	}
	if !csrfValid(tok, r.PostForm.Get("csrf")) {
		h.forbidden(w, r)
		return Session{}, false
	}
	if !h.limits.allow(w, "session:"+s.ID) {
		h.tooMany(w, r)
		return Session{}, false
	}
	return s, true
}

// sameOrigin reports whether the browser says a request comes from one of
// the sidecar's pages. Under Referrer-Policy: no-referrer browsers send
// "Origin: null" with a form's POST, so Sec-Fetch-Site (which that policy
// does not touch) is the signal; a real foreign Origin is refused too. The
// CSRF token is the protection that holds for browsers sending neither.
func sameOrigin(r *http.Request, origin string) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return false
	}
	o := r.Header.Get("Origin")
	return o == "" || o == "null" || o == origin
}

func (h *Handler) forbidden(w http.ResponseWriter, r *http.Request) {
	h.render(w, r, http.StatusForbidden, view{Title: "This request was refused",
		Message: "It did not come from this page. Open the page again and use its buttons.", Retry: PathPrefix, RetryText: "Back to the page"})
}

func (h *Handler) connect(w http.ResponseWriter, r *http.Request) {
	s, ok := h.post(w, r)
	if !ok {
		return
	}
	m := mode(r)
	name := r.PostForm.Get("provider")
	if !slices.Contains(h.visible(s), name) {
		h.render(w, r, http.StatusBadRequest, view{Title: "Unknown service", Message: "This page does not offer that service.", Retry: h.pageURL(m, nil), RetryText: "Back to the page"})
		return
	}
	ret := h.ReturnURL(m)
	if m == "iframe" {
		// The flow runs in its own window (providers refuse to be
		// framed); that window tells the frame when it is done.
		ret = h.ReturnURL("popup")
	}
	secret, fresh := h.browserSecret(r)
	authURL, err := h.b.Connect(r.Context(), s, ConnectRequest{
		Provider: name, ConnectionID: bounded(r.PostForm.Get("connection_id"), 64),
		Binding: BindingHash(secret), ReturnTo: ret,
	})
	if errors.Is(err, ErrNotAllowed) {
		h.forbidden(w, r)
		return
	}
	if err != nil {
		h.log.LogAttrs(r.Context(), slog.LevelError, "connect page: start flow", slog.String("provider", name), slog.String("err", err.Error()))
		h.redirect(w, r, Outcome(h.pageURL(m, nil), name, StatusFailed, ""))
		return
	}
	if fresh {
		http.SetCookie(w, h.cookie(browserCookie, secret, h.cfg.Now().Add(browserCookieTTL)))
	}
	h.redirect(w, r, authURL)
}

func (h *Handler) disconnect(w http.ResponseWriter, r *http.Request) {
	s, ok := h.post(w, r)
	if !ok {
		return
	}
	m := mode(r)
	if !s.AllowDisconnect {
		h.forbidden(w, r)
		return
	}
	id := bounded(r.PostForm.Get("connection_id"), 64)
	conns, err := h.b.Connections(r.Context(), s)
	if err != nil {
		h.internal(w, r, "connections", err)
		return
	}
	var provider string
	for _, c := range conns {
		if c.ID == id {
			provider = c.Provider
		}
	}
	if provider == "" {
		h.render(w, r, http.StatusNotFound, view{Title: "Not connected", Message: "That connection is not one of yours, or it was already disconnected.", Retry: h.pageURL(m, nil), RetryText: "Back to the page"})
		return
	}
	if err := h.b.Disconnect(r.Context(), s, id); err != nil {
		if errors.Is(err, ErrNotAllowed) {
			h.forbidden(w, r)
			return
		}
		h.internal(w, r, "disconnect", err)
		return
	}
	h.redirect(w, r, Outcome(h.pageURL(m, nil), provider, StatusDisconnected, id))
}

// start is the start URL of an API flow: it binds the flow to this
// browser with the binding cookie and sends it on to the provider.
func (h *Handler) start(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// HEAD (a link preview, a crawler) must not bind the flow.
		w.Header().Set("Allow", http.MethodGet)
		h.render(w, r, http.StatusMethodNotAllowed, view{Title: "Method not allowed"})
		return
	}
	if !h.limits.allow(w, "addr:"+clientAddr(r)) {
		h.tooMany(w, r)
		return
	}
	secret, fresh := h.browserSecret(r)
	authURL, err := h.b.Begin(r.Context(), bounded(r.URL.Query().Get("flow"), 128), BindingHash(secret))
	if errors.Is(err, ErrFlowInvalid) {
		h.render(w, r, http.StatusBadRequest, view{Title: "This link is no longer valid",
			Message: "It expired, or it was already opened in a browser. Start connecting again from the application."})
		return
	}
	if err != nil {
		h.internal(w, r, "begin flow", err)
		return
	}
	if fresh {
		http.SetCookie(w, h.cookie(browserCookie, secret, h.cfg.Now().Add(browserCookieTTL)))
	}
	h.redirect(w, r, authURL)
}

func (h *Handler) redirect(w http.ResponseWriter, r *http.Request, to string) {
	h.securityHeaders(w, "")
	http.Redirect(w, r, to, http.StatusSeeOther)
}

func (h *Handler) asset(name, ctype string) http.HandlerFunc {
	b, err := assets.ReadFile("assets/" + name)
	if err != nil {
		panic(err) // embedded at build time
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if name == "embed.js" {
			// The application's pages, on their own origin, load it.
			w.Header().Set("Cross-Origin-Resource-Policy", "cross-origin")
		}
		serveStatic(w, b, ctype)
	}
}

func (h *Handler) logo(w http.ResponseWriter, r *http.Request) {
	if len(h.cfg.Logo) == 0 {
		http.NotFound(w, r)
		return
	}
	serveStatic(w, h.cfg.Logo, h.cfg.LogoType)
}

// favicon is the application's initial on the theme colour.
func (h *Handler) favicon(w http.ResponseWriter, r *http.Request) {
	serveStatic(w, []byte(monogram(&Provider{DisplayName: h.cfg.AppName, Color: h.theme.Accent})), "image/svg+xml")
}

func (h *Handler) icon(w http.ResponseWriter, r *http.Request) {
	p, ok := h.providers[r.PathValue("name")]
	if !ok || len(p.Icon) == 0 {
		http.NotFound(w, r)
		return
	}
	serveStatic(w, p.Icon, p.IconType)
}

// serveStatic serves one of the page's own files. An SVG is a document
// that can hold script: its own CSP keeps it inert if opened directly.
func serveStatic(w http.ResponseWriter, b []byte, ctype string) {
	hd := w.Header()
	hd.Set("Content-Type", ctype)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; sandbox")
	if hd.Get("Cross-Origin-Resource-Policy") == "" {
		hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	}
	hd.Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
}

// bounded cuts s to n bytes: form fields are the browser's.
func bounded(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// monogram draws a provider's default icon: its initial on its colour.
func monogram(p *Provider) template.HTML {
	initial := "?"
	for _, r := range p.DisplayName {
		initial = strings.ToUpper(string(r))
		break
	}
	rgb, _ := parseHex(p.Color)
	fg := onColor(rgb)
	return template.HTML(fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 40" width="40" height="40" focusable="false" aria-hidden="true"><rect width="40" height="40" rx="9" fill="%s"/><text x="20" y="27" text-anchor="middle" font-size="20" font-weight="700" font-family="system-ui,sans-serif" fill="%s">%s</text></svg>`,
		template.HTMLEscapeString(p.Color), fg, template.HTMLEscapeString(initial)))
}
