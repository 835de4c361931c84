package server

import (
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/tokenvault/tokenvault/server/connectpage"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// callbackHandler serves the provider's redirect back to the sidecar:
// GET /oauth/callback/{provider}?code=...&state=... (or ?error=...).
type callbackHandler struct {
	v *vault.Vault
	// page reads the browser's binding cookie, and is where flows the
	// connect page started return to, with their outcome.
	page  *connectpage.Handler
	log   *slog.Logger
	audit *audit.Log // nil: not audited
	// failures bounds what failed callbacks write to the log and the
	// audit: a flood of forged ones is counted, not written one by one.
	failures *failureBudget
	now      func() time.Time
}

// pageTmpl is parsed on first use, not at start.
var pageTmpl = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem;color:#222}h1{font-size:1.4rem}</style>
</head><body><h1>{{.Title}}</h1><p>{{.Message}}</p>{{if .ConnectionID}}<p>Connection: <code>{{.ConnectionID}}</code></p>{{end}}</body></html>
`))
})

type page struct {
	Title, Message, ConnectionID string
}

func (h *callbackHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		// A GET pattern also matches HEAD: a link checker or preview must
		// not spend the state, or the code.
		w.Header().Set("Allow", http.MethodGet)
		render(w, http.StatusMethodNotAllowed, page{Title: "Method not allowed", Message: "Open this address in a browser."})
		return
	}
	q := r.URL.Query()
	provider := r.PathValue("provider")
	res, err := h.v.CompleteConnect(r.Context(), vault.CallbackRequest{Provider: provider, State: q.Get("state"), Code: q.Get("code"), Error: q.Get("error"),
		Binding: h.page.BrowserBinding(r)})
	if err != nil {
		h.fail(w, r, res, err)
		return
	}
	h.record(res.Connection.ID, res.Connection.Provider, "OK", callbackReason(res.Reconnected))
	h.log.LogAttrs(r.Context(), slog.LevelInfo, "connected",
		slog.String("connection", res.Connection.ID), slog.String("provider", provider),
		slog.Bool("reconnected", res.Reconnected))
	if h.page.IsPageURL(res.ReturnTo) {
		st := connectpage.StatusConnected
		if res.Reconnected {
			st = connectpage.StatusReconnected
		}
		h.page.SecurityHeaders(w)
		http.Redirect(w, r, connectpage.Outcome(res.ReturnTo, provider, st, res.Connection.ID), http.StatusSeeOther)
		return
	}
	if res.ReturnTo != "" {
		http.Redirect(w, r, withQuery(res.ReturnTo, "connection_id", res.Connection.ID, "status", "connected"), http.StatusSeeOther)
		return
	}
	render(w, http.StatusOK, page{Title: "Connected", Message: "You can close this window and return to the application.", ConnectionID: res.Connection.ID})
}

func (h *callbackHandler) fail(w http.ResponseWriter, r *http.Request, res *vault.CallbackResult, err error) {
	var (
		st     = http.StatusBadRequest
		p      page
		reason string
	)
	var pe *vault.ProviderError
	switch {
	case errors.Is(err, vault.ErrInvalidState):
		reason = "invalid_state"
		p = page{Title: "This link is no longer valid", Message: "The connection request is unknown, was already used, or expired. Start connecting again from the application."}
	case errors.Is(err, vault.ErrBrowserMismatch):
		reason, st = "browser_mismatch", http.StatusForbidden
		p = page{Title: "Finish connecting in the browser you started in", Message: "This connection was started in another browser, so it was not completed here and nothing was connected. If you started it, go back to that browser; otherwise close this page: someone may have sent you this link to connect your account to theirs."}
	case errors.Is(err, vault.ErrInvalidArgument):
		reason = "bad_request"
		p = page{Title: "Connection failed", Message: "The service sent the browser back without an authorization. Start connecting again from the application."}
	case errors.Is(err, vault.ErrConsentDenied):
		reason = "access_denied"
		p = page{Title: "Connection cancelled", Message: "The authorization was declined, so nothing was connected."}
	case errors.As(err, &pe) && errors.Is(err, vault.ErrMisconfigured):
		reason, st = "provider_misconfigured", http.StatusBadGateway
		p = page{Title: "Connection failed", Message: "The service rejected this application's configuration. The operator has been told; try again later."}
	case errors.As(err, &pe) && errors.Is(err, vault.ErrUnavailable):
		reason, st = "provider_unavailable", http.StatusBadGateway
		p = page{Title: "Connection failed", Message: "The service could not be reached. Start connecting again in a moment."}
	case errors.As(err, &pe):
		reason = "exchange_failed"
		p = page{Title: "Connection failed", Message: "The service did not accept the authorization. Start connecting again from the application."}
	default:
		reason, st = "internal", http.StatusInternalServerError
		p = page{Title: "Connection failed", Message: "Something went wrong on our side. Start connecting again from the application."}
	}
	attrs := []slog.Attr{slog.String("reason", reason), slog.String("provider", r.PathValue("provider"))}
	if pe != nil {
		attrs = append(attrs, slog.String("code", pe.Code))
	}
	lvl := slog.LevelInfo
	if st >= 500 || errors.Is(err, vault.ErrMisconfigured) {
		lvl = slog.LevelError
	}
	if write, suppressed := h.failures.take(h.now()); write {
		if suppressed > 0 {
			h.log.LogAttrs(r.Context(), slog.LevelWarn, "connect callback failures not logged one by one",
				slog.Int("count", suppressed), slog.Duration("window", failureWindow))
			h.record("", "", "RESOURCE_EXHAUSTED", ReasonCallbackFailuresSuppressed)
		}
		h.log.LogAttrs(r.Context(), lvl, "connect callback failed", attrs...)
		h.recordFailure(r.PathValue("provider"), reason)
	}
	if res != nil && h.page.IsPageURL(res.ReturnTo) && !errors.Is(err, vault.ErrInvalidArgument) {
		h.page.SecurityHeaders(w)
		http.Redirect(w, r, connectpage.Outcome(res.ReturnTo, r.PathValue("provider"), pageStatus(reason), ""), http.StatusSeeOther)
		return
	}
	if res != nil && res.ReturnTo != "" && !errors.Is(err, vault.ErrInvalidState) && !errors.Is(err, vault.ErrInvalidArgument) {
		http.Redirect(w, r, withQuery(res.ReturnTo, "status", "error", "error", reason), http.StatusSeeOther)
		return
	}
	render(w, st, p)
}

// pageStatus is the connect page's status for a failed callback's reason.
func pageStatus(reason string) string {
	switch reason {
	case "access_denied":
		return connectpage.StatusDenied
	case "provider_unavailable":
		return connectpage.StatusUnavailable
	}
	return connectpage.StatusFailed
}

func render(w http.ResponseWriter, status int, p page) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = pageTmpl().Execute(w, p)
}

// withQuery adds key/value pairs to the query of u, which the vault has
// checked against the allowlist.
func withQuery(u string, kv ...string) string {
	pu, err := url.Parse(u)
	if err != nil {
		return u
	}
	q := pu.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	pu.RawQuery = q.Encode()
	return pu.String()
}

// callbackMethod is the audit record's method for connect callbacks.
const callbackMethod = "http:callback"

func callbackReason(reconnected bool) string {
	if reconnected {
		return "RECONNECTED" // a needs_reauth connection got a new grant, keeping its id
	}
	return "CONNECTED"
}

// callbackOutcomes maps a failed callback's reason to the audit outcome (a
// gRPC code name, as for calls) and reason.
var callbackOutcomes = map[string][2]string{
	"invalid_state":          {"INVALID_ARGUMENT", "INVALID_STATE"},
	"bad_request":            {"INVALID_ARGUMENT", "BAD_CALLBACK"},
	"access_denied":          {"PERMISSION_DENIED", "CONSENT_DENIED"},
	"browser_mismatch":       {"PERMISSION_DENIED", "BROWSER_MISMATCH"},
	"provider_misconfigured": {"FAILED_PRECONDITION", ReasonProviderMisconfigured},
	"provider_unavailable":   {"UNAVAILABLE", ReasonProviderUnavailable},
	"exchange_failed":        {"FAILED_PRECONDITION", "EXCHANGE_FAILED"},
	"internal":               {"INTERNAL", ReasonInternal},
}

// record audits a callback. A browser has no credential: the record has no
// caller.
func (h *callbackHandler) record(connID, provider, outcome, reason string) {
	if h.audit == nil {
		return
	}
	h.audit.Record(audit.Record{Method: callbackMethod, ConnectionID: connID, Provider: provider, Outcome: outcome, Reason: reason})
}

func (h *callbackHandler) recordFailure(provider, reason string) {
	if len(provider) > 64 {
		provider = provider[:64] // the path is the browser's: keep the record small
	}
	o, ok := callbackOutcomes[reason]
	if !ok {
		o = [2]string{"INTERNAL", ReasonInternal}
	}
	h.record("", provider, o[0], o[1])
}

// ReasonCallbackFailuresSuppressed is the audit reason of the record that
// stands for the failed callbacks of a window past the first
// failuresPerWindow; the log line beside it gives their count.
const ReasonCallbackFailuresSuppressed = "CALLBACK_FAILURES_SUPPRESSED"

const (
	failureWindow     = time.Minute
	failuresPerWindow = 20
)

// failureBudget lets the first failuresPerWindow failed callbacks of each
// window be logged and audited one by one and counts the rest. The count
// of a window is reported (one log line, one audit record) with the next
// failure written after it. A nil *failureBudget writes everything.
type failureBudget struct {
	mu         sync.Mutex
	start      time.Time
	written    int
	suppressed int
	total      uint64
}

// take counts one failure and reports whether to write it, and how many
// failures went unwritten since the last one written.
func (b *failureBudget) take(now time.Time) (write bool, suppressed int) {
	if b == nil {
		return true, 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total++
	if now.Sub(b.start) >= failureWindow {
		b.start, b.written = now, 0
	}
	if b.written >= failuresPerWindow {
		b.suppressed++
		return false, 0
	}
	b.written++
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// Total returns how many failed callbacks were counted.
func (b *failureBudget) Total() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.total
}
