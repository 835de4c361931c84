package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"golang.org/x/oauth2"
)

// TokenSource adapts a connection to oauth2.TokenSource. Every Token call asks
// the sidecar, which caches, so it is cheap; wrapping it in
// oauth2.ReuseTokenSource saves even that round trip until the token is within
// oauth2's expiry margin (10s, not MinValid) of its expiry. ctx is used for
// every call; once it is done Token fails. The returned oauth2.Token carries
// the connection's metadata as extras (tok.Extra("team_id")). Errors carry
// the sidecar's reason; see IsReauthRequired.
func (c *Client) TokenSource(ctx context.Context, connectionID string, opts ...TokenOption) oauth2.TokenSource {
	return &tokenSource{ctx: ctx, c: c, id: connectionID, opts: slices.Clone(opts)}
}

type tokenSource struct {
	ctx  context.Context
	c    *Client
	id   string
	opts []TokenOption
}

func (ts *tokenSource) Token() (*oauth2.Token, error) {
	t, err := ts.c.AccessToken(ts.ctx, ts.id, ts.opts...)
	if err != nil {
		return nil, err
	}
	extra := make(map[string]any, len(t.Metadata))
	for k, v := range t.Metadata {
		extra[k] = v
	}
	tok := &oauth2.Token{
		AccessToken: t.AccessToken,
		TokenType:   t.TokenType,
		Expiry:      t.Expiry,
	}
	return tok.WithExtra(extra), nil
}

// HTTPClient returns an *http.Client that authorizes each request with the
// connection's access token; see Transport for exactly when it sends the
// token and when it retries. The client has no timeout: bound requests with
// their context (which also bounds the calls to the sidecar) or set Timeout.
// Sidecar errors come back wrapped in *url.Error; Reason and the Is helpers
// see through it.
func (c *Client) HTTPClient(connectionID string, opts ...TokenOption) *http.Client {
	return &http.Client{Transport: &Transport{
		Client:       c,
		ConnectionID: connectionID,
		Options:      slices.Clone(opts),
	}}
}

// Transport is an http.RoundTripper that sets "Authorization: Bearer <token>"
// with a connection's access token, asked of the sidecar with the request's
// context for every request.
//
// If the response is 401 Unauthorized, Transport asks the sidecar for a
// forced refresh (ForceRefresh) and sends the request once more with the new
// token. A second 401 is returned to the caller as is: there is no loop. The
// first 401 is returned as is, without asking for a refresh, if the request
// body cannot be replayed (Body is set and GetBody is nil; http.NewRequest
// sets GetBody for *bytes.Buffer, *bytes.Reader and *strings.Reader bodies),
// or if the refresh yields the same token. If the forced refresh fails,
// RoundTrip returns its error (e.g. one for which IsReauthRequired is true)
// instead of the 401.
//
// The token goes only to the scheme and host of the request the caller made:
// when an http.Client follows a redirect elsewhere, Transport sends the
// redirected request without it (as net/http does with an Authorization
// header the caller set) and does not retry its 401.
//
// A Transport must not be modified after first use; it is safe for
// concurrent use.
type Transport struct {
	Client       *Client
	ConnectionID string
	// Options apply to every token request, e.g. MinValid or Credential.
	Options []TokenOption
	// Base sends the requests; nil means http.DefaultTransport.
	Base http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !sameOrigin(req, firstRequest(req)) {
		return t.base().RoundTrip(req)
	}
	ctx := req.Context()
	tok, err := t.Client.AccessToken(ctx, t.ConnectionID, t.Options...)
	if err != nil {
		// A RoundTripper must close the body, even on errors.
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.base().RoundTrip(authorize(req, req.Body, tok.AccessToken))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	if req.GetBody == nil && req.Body != nil && req.Body != http.NoBody {
		return resp, nil // the body is spent; the caller sees the 401
	}

	opts := append(slices.Clip(t.Options), ForceRefresh())
	fresh, err := t.Client.AccessToken(ctx, t.ConnectionID, opts...)
	if err != nil {
		drain(resp)
		return nil, fmt.Errorf("client: refresh after 401 from %s: %w", req.URL.Host, err)
	}
	if fresh.AccessToken == tok.AccessToken {
		// Nothing changed (e.g. a provider that cannot refresh); the same
		// token would only earn the same answer.
		return resp, nil
	}
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			drain(resp)
			return nil, fmt.Errorf("client: replay request body: %w", err)
		}
	}
	drain(resp)
	return t.base().RoundTrip(authorize(req, body, fresh.AccessToken))
}

func (t *Transport) base() http.RoundTripper {
	if t.Base != nil {
		return t.Base
	}
	return http.DefaultTransport
}

// authorize returns a copy of req with body and the token; a RoundTripper
// must not modify the request it was given.
func authorize(req *http.Request, body io.ReadCloser, token string) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set("Authorization", "Bearer "+token)
	return r
}

// firstRequest returns the request the caller made, following the chain
// net/http builds when it follows redirects.
func firstRequest(req *http.Request) *http.Request {
	for req.Response != nil && req.Response.Request != nil {
		req = req.Response.Request
	}
	return req
}

func sameOrigin(a, b *http.Request) bool {
	return strings.EqualFold(a.URL.Scheme, b.URL.Scheme) && strings.EqualFold(a.URL.Host, b.URL.Host)
}

// drain lets the connection of a response we discard be reused.
func drain(resp *http.Response) {
	io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
}
