package connectpage

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"strings"
	"time"
)

// securityHeaders sets the headers every page and redirect carries. nonce
// is the page's script and style nonce ("" for redirects).
//
// The CSP admits no inline script or style without the nonce and no origin
// but the sidecar's own, except that forms may be redirected to the
// providers' authorization endpoints (Chromium applies form-action to the
// redirects that follow a form's submission). Frames: only the configured
// ancestors, none by default.
func (h *Handler) securityHeaders(w http.ResponseWriter, nonce string) {
	hd := w.Header()
	script, style := "'none'", "'self'"
	if nonce != "" {
		script = "'nonce-" + nonce + "'"
		style = "'self' 'nonce-" + nonce + "'"
	}
	frames := "'none'"
	if len(h.cfg.FrameAncestors) > 0 {
		frames = strings.Join(h.cfg.FrameAncestors, " ")
	} else {
		hd.Set("X-Frame-Options", "DENY") // for browsers without frame-ancestors
	}
	formAction := strings.Join(append([]string{"'self'"}, h.cfg.FormOrigins...), " ")
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src "+script+"; style-src "+style+
		"; img-src 'self'; form-action "+formAction+"; frame-ancestors "+frames+"; base-uri 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
	// The popup keeps its opener (postMessage), so no same-origin COOP.
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
}

// SecurityHeaders sets the page's headers for a redirect or response
// written elsewhere (the callback).
func (h *Handler) SecurityHeaders(w http.ResponseWriter) { h.securityHeaders(w, "") }

func nonce() string {
	var b [18]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Cookies. Over https they carry the __Host- prefix, which the browser
// honours only with Secure, Path=/ and no Domain: no subdomain and no
// plain-http page can set or overwrite them. Over plain http (dev mode, or
// a public URL without TLS) a Secure cookie would be dropped by most
// browsers, so the cookies lose the prefix and Secure: the binding then
// holds against other browsers but not against someone who can read or
// write the traffic.
const (
	sessionCookie = "tv_session"
	browserCookie = "tv_browser"
	// browserCookieTTL bounds the browser secret's cookie: longer than
	// any flow, renewed by none.
	browserCookieTTL = 2 * time.Hour
)

func (h *Handler) cookieName(base string) string {
	if h.secure {
		return "__Host-" + base
	}
	return base
}

func (h *Handler) cookie(base, value string, expires time.Time) *http.Cookie {
	return &http.Cookie{
		Name: h.cookieName(base), Value: value, Path: "/",
		MaxAge:   max(int(expires.Sub(h.cfg.Now()).Seconds()), 1),
		HttpOnly: true, Secure: h.secure, SameSite: http.SameSiteLaxMode,
	}
}

// browserSecret returns the request's browser secret from its cookie, or
// a new one (fresh) to set.
func (h *Handler) browserSecret(r *http.Request) (secret string, fresh bool) {
	if c, err := r.Cookie(h.cookieName(browserCookie)); err == nil && validSecret(c.Value) {
		return c.Value, false
	}
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:]), true
}

func validSecret(s string) bool {
	b, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil && len(b) == 32
}

// BrowserBinding returns the binding hash of the request's browser secret,
// "" if it has none: what the callback compares with the flow's.
func (h *Handler) BrowserBinding(r *http.Request) string {
	c, err := r.Cookie(h.cookieName(browserCookie))
	if err != nil || !validSecret(c.Value) {
		return ""
	}
	return BindingHash(c.Value)
}

// BindingHash is what a flow stores of a browser secret: its SHA-256, hex.
func BindingHash(secret string) string {
	sum := sha256.Sum256([]byte("tokenvault browser binding v1\x00" + secret))
	return hex.EncodeToString(sum[:])
}

// csrfToken derives the page's CSRF token from the session token (which
// only the sidecar and the browser's HttpOnly cookie hold): valid for that
// session only, and the same on every replica.
func csrfToken(sessionToken string) string {
	sum := sha256.Sum256([]byte("tokenvault connect csrf v1\x00" + sessionToken))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func csrfValid(sessionToken, got string) bool {
	want := csrfToken(sessionToken)
	return subtle.ConstantTimeCompare([]byte(want), []byte(got)) == 1
}

// clientAddr is the peer's address without its port: the unit of the
// per-address rate limit. Behind an ingress it is the ingress's address,
// unless the ingress forwards the connection itself.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// ClientAddr is clientAddr for the callback.
func ClientAddr(r *http.Request) string { return clientAddr(r) }
