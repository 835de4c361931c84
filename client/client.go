// Package client is the Go client of a tokenvault sidecar. It is a thin layer
// over the generated gRPC stubs: AccessToken and its adapters TokenSource and
// HTTPClient, thin wrappers for the other calls, and helpers that read the
// google.rpc.ErrorInfo reason the sidecar attaches to its errors.
//
// A Client is safe for concurrent use. Errors returned by its methods wrap the
// gRPC status; use Reason, IsReauthRequired, IsNotConnected, IsUnavailable or
// status.Code on them, not a type assertion.
package client

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tokenvaultv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// Client calls a tokenvault sidecar. The zero value is not usable; create one
// with Dial or New.
type Client struct {
	api   tokenvaultv1.TokenVaultServiceClient
	close func() error // nil if the Client does not own its connection
}

// An Option configures Dial or New.
type Option func(*options)

type options struct {
	apiKey   string
	dialOpts []grpc.DialOption
}

// WithAPIKey makes every call, including those made through API, carry the
// metadata "authorization: Bearer <key>". The key travels in clear over the
// default insecure transport; that is meant for a loopback or unix-socket
// sidecar.
func WithAPIKey(key string) Option {
	return func(o *options) { o.apiKey = key }
}

// WithDialOptions adds gRPC dial options for Dial, after the default
// insecure transport credentials, so a grpc.WithTransportCredentials here
// replaces them. New ignores it.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// Dial connects to a tokenvault sidecar at target, e.g. "127.0.0.1:7070" or
// "unix:///run/tokenvault.sock" (any grpc.NewClient target). It uses insecure
// transport credentials unless WithDialOptions says otherwise, because the
// sidecar listens on loopback. Like grpc.NewClient it does not wait for the
// connection: a sidecar that is down shows up as codes.Unavailable on the
// first call. The caller must Close the Client.
func Dial(target string, opts ...Option) (*Client, error) {
	o := collect(opts)
	dialOpts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}, o.dialOpts...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", target, err)
	}
	c := newClient(conn, o)
	c.close = conn.Close
	return c, nil
}

// New returns a Client that calls the sidecar over conn, which the caller
// keeps owning: Close does not close it.
func New(conn grpc.ClientConnInterface, opts ...Option) *Client {
	return newClient(conn, collect(opts))
}

func collect(opts []Option) options {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

func newClient(conn grpc.ClientConnInterface, o options) *Client {
	if o.apiKey != "" {
		conn = &keyConn{ClientConnInterface: conn, authz: "Bearer " + o.apiKey}
	}
	return &Client{api: tokenvaultv1.NewTokenVaultServiceClient(conn)}
}

// keyConn adds the API key to every call. It wraps the connection, rather
// than being a grpc.PerRPCCredentials dial option, so that it also works for
// a connection handed to New.
type keyConn struct {
	grpc.ClientConnInterface
	authz string
}

func (k *keyConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", k.authz)
	return k.ClientConnInterface.Invoke(ctx, method, args, reply, opts...)
}

func (k *keyConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", k.authz)
	return k.ClientConnInterface.NewStream(ctx, desc, method, opts...)
}

// Close closes the connection if Dial opened it; for a Client from New it
// does nothing. Calls in flight fail with codes.Canceled.
func (c *Client) Close() error {
	if c.close == nil {
		return nil
	}
	return c.close()
}

// API returns the generated stub, for calls and fields this package does not
// wrap. It carries the API key given to Dial or New.
func (c *Client) API() tokenvaultv1.TokenVaultServiceClient { return c.api }

// Token is an access token handed out by the sidecar. It never includes a
// refresh token: the sidecar keeps that.
type Token struct {
	AccessToken string
	// TokenType is "Bearer" for every provider tokenvault ships, and if the
	// sidecar leaves it empty.
	TokenType string
	// Expiry is zero if the provider gave the token no known expiry.
	Expiry time.Time
	// GrantedScopes are the scopes the user granted; MissingScopes those the
	// application asked for and the user did not grant.
	GrantedScopes, MissingScopes []string
	// Metadata is non-secret provider metadata (team_id, instance_url, ...).
	Metadata     map[string]string
	ConnectionID string
	Provider     string
}

// A TokenOption modifies a GetAccessToken request.
type TokenOption func(*tokenvaultv1.GetAccessTokenRequest)

// MinValid asks for a token that stays valid for at least d. Zero (or less)
// means the sidecar's default, 5 minutes; the sidecar rejects more than an
// hour with reason INVALID_ARGUMENT, and caps d at a quarter of the token's
// lifetime (at least 10 s), so a short-lived token is not refreshed on every
// call.
func MinValid(d time.Duration) TokenOption {
	return func(r *tokenvaultv1.GetAccessTokenRequest) {
		if d <= 0 {
			r.MinValidFor = nil
			return
		}
		r.MinValidFor = durationpb.New(d)
	}
}

// ForceRefresh makes the sidecar refresh at the provider even if the stored
// token is still valid, e.g. because the provider answered 401 to it. Every
// forced call costs a round trip to the provider; use it after a rejection,
// not routinely.
func ForceRefresh() TokenOption {
	return func(r *tokenvaultv1.GetAccessTokenRequest) { r.ForceRefresh = true }
}

// Credential selects a credential of the connection; "" (the default) is the
// primary one. Slack connections may have "user" besides the bot token.
func Credential(name string) TokenOption {
	return func(r *tokenvaultv1.GetAccessTokenRequest) { r.Credential = name }
}

// ByOwner names the connection by its owner (the application's user id)
// and provider instead of its id: pass "" as the connection id to
// AccessToken, TokenSource or HTTPClient, or call AccessTokenFor. If the
// owner has several connections to the provider, Label says which; the
// sidecar answers INVALID_ARGUMENT rather than pick one, and NOT_CONNECTED
// when none matches.
func ByOwner(owner, provider string) TokenOption {
	return func(r *tokenvaultv1.GetAccessTokenRequest) {
		if r.Selector == nil {
			r.Selector = &tokenvaultv1.ConnectionSelector{}
		}
		r.Selector.Owner, r.Selector.Provider = owner, provider
	}
}

// Label picks one of an owner's several connections to a provider (see
// ByOwner). Given with a connection id, the sidecar refuses the request.
func Label(label string) TokenOption {
	return func(r *tokenvaultv1.GetAccessTokenRequest) {
		if r.Selector == nil {
			r.Selector = &tokenvaultv1.ConnectionSelector{}
		}
		r.Selector.Label = label
	}
}

// AccessTokenFor is AccessToken for owner's connection to provider: the
// token by user and provider, with no connection id to keep.
func (c *Client) AccessTokenFor(ctx context.Context, owner, provider string, opts ...TokenOption) (*Token, error) {
	return c.AccessToken(ctx, "", append([]TokenOption{ByOwner(owner, provider)}, opts...)...)
}

// AccessToken returns an access token for the connection that stays valid for
// at least MinValid (default: the sidecar's, 5 minutes), refreshing it at the
// provider first if needed. The sidecar caches tokens, so calling it for every
// request is cheap. Errors carry a reason: see IsNotConnected,
// IsReauthRequired and IsUnavailable.
func (c *Client) AccessToken(ctx context.Context, connectionID string, opts ...TokenOption) (*Token, error) {
	req := &tokenvaultv1.GetAccessTokenRequest{ConnectionId: connectionID}
	for _, opt := range opts {
		opt(req)
	}
	resp, err := c.api.GetAccessToken(ctx, req)
	if err != nil {
		name := connectionID
		if sel := req.GetSelector(); sel != nil && name == "" {
			name = fmt.Sprintf("%s at %s", sel.GetOwner(), sel.GetProvider())
			if sel.GetLabel() != "" {
				name += " (" + sel.GetLabel() + ")"
			}
		}
		return nil, fmt.Errorf("client: access token for %s: %w", name, err)
	}
	t := &Token{
		AccessToken:   resp.GetAccessToken(),
		TokenType:     resp.GetTokenType(),
		GrantedScopes: resp.GetGrantedScopes(),
		MissingScopes: resp.GetMissingScopes(),
		Metadata:      resp.GetMetadata(),
		ConnectionID:  resp.GetConnectionId(),
		Provider:      resp.GetProvider(),
	}
	if resp.GetExpireTime() != nil {
		t.Expiry = resp.GetExpireTime().AsTime()
	}
	if t.TokenType == "" {
		t.TokenType = "Bearer"
	}
	return t, nil
}

// StartConnect begins the authorization-code flow and returns the URL to send
// the end user's browser to: the sidecar's start URL, which binds the flow
// to the browser that opens it, then goes on to the provider. The flow expires after a while (see
// StartConnectResponse.expire_time, available through API). A return_to that
// is not on the sidecar's allowlist fails with reason RETURN_TO_NOT_ALLOWED, an
// unconfigured provider with UNKNOWN_PROVIDER.
func (c *Client) StartConnect(ctx context.Context, req *tokenvaultv1.StartConnectRequest) (string, error) {
	resp, err := c.api.StartConnect(ctx, req)
	if err != nil {
		return "", fmt.Errorf("client: start connect: %w", err)
	}
	return resp.GetAuthorizationUrl(), nil
}

// CreateConnectSession returns a link to the sidecar's connect page for
// req.owner, and when it stops working: redirect the end user's browser to
// it, or open it in a popup with the sidecar's /connect/embed.js. The link
// holds a secret for that user's browser only: do not log it or send it
// elsewhere. A ttl over an hour fails with INVALID_ARGUMENT, a return_to
// off the allowlist with RETURN_TO_NOT_ALLOWED.
func (c *Client) CreateConnectSession(ctx context.Context, req *tokenvaultv1.CreateConnectSessionRequest) (string, time.Time, error) {
	resp, err := c.api.CreateConnectSession(ctx, req)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("client: create connect session: %w", err)
	}
	return resp.GetUrl(), resp.GetExpireTime().AsTime(), nil
}

// GetConnection returns one connection, without token material. An unknown
// id fails with reason NOT_CONNECTED.
func (c *Client) GetConnection(ctx context.Context, connectionID string) (*tokenvaultv1.Connection, error) {
	resp, err := c.api.GetConnection(ctx, &tokenvaultv1.GetConnectionRequest{ConnectionId: connectionID})
	if err != nil {
		return nil, fmt.Errorf("client: get connection %s: %w", connectionID, err)
	}
	return resp.GetConnection(), nil
}

// ListConnections returns an iterator over the connections matching filter
// (nil matches all), fetching one page per call to the sidecar as the loop
// advances; filter.page_size sets the page size and filter.page_token where
// to start. filter is not modified. On an error the iterator yields
// (nil, err) once and stops. Breaking out of the loop stops fetching.
func (c *Client) ListConnections(ctx context.Context, filter *tokenvaultv1.ListConnectionsRequest) iter.Seq2[*tokenvaultv1.Connection, error] {
	return func(yield func(*tokenvaultv1.Connection, error) bool) {
		req := &tokenvaultv1.ListConnectionsRequest{}
		if filter != nil {
			req = proto.CloneOf(filter)
		}
		for {
			resp, err := c.api.ListConnections(ctx, req)
			if err != nil {
				yield(nil, fmt.Errorf("client: list connections: %w", err))
				return
			}
			for _, conn := range resp.GetConnections() {
				if !yield(conn, nil) {
					return
				}
			}
			next := resp.GetNextPageToken()
			if next == "" {
				return
			}
			// A server that hands back the token it was given would make
			// this loop forever.
			if next == req.PageToken {
				yield(nil, errors.New("client: list connections: server repeated page token"))
				return
			}
			req.PageToken = next
		}
	}
}

// RevokeConnection revokes the grant at the provider and destroys the token
// material; reason is recorded with the revocation. It is idempotent. The
// local material is destroyed even if the provider could not be reached:
// the response's provider_revoked and provider_error say how that went.
func (c *Client) RevokeConnection(ctx context.Context, connectionID, reason string) (*tokenvaultv1.RevokeConnectionResponse, error) {
	resp, err := c.api.RevokeConnection(ctx, &tokenvaultv1.RevokeConnectionRequest{
		ConnectionId: connectionID,
		Reason:       reason,
	})
	if err != nil {
		return nil, fmt.Errorf("client: revoke connection %s: %w", connectionID, err)
	}
	return resp, nil
}

// ValidateConnection asks the provider now whether the connection's grant
// is still live, without refreshing it. An operator's call: the response's
// live is false, and the connection NEEDS_REAUTH, if the provider rejected
// the grant. A provider that cannot validate (Provider.supports_validation)
// gives INVALID_ARGUMENT.
func (c *Client) ValidateConnection(ctx context.Context, connectionID string) (*tokenvaultv1.ValidateConnectionResponse, error) {
	resp, err := c.api.ValidateConnection(ctx, &tokenvaultv1.ValidateConnectionRequest{ConnectionId: connectionID})
	if err != nil {
		return nil, fmt.Errorf("client: validate connection %s: %w", connectionID, err)
	}
	return resp, nil
}

// ListProviders returns the configured providers. It never includes their
// secrets.
func (c *Client) ListProviders(ctx context.Context) ([]*tokenvaultv1.Provider, error) {
	resp, err := c.api.ListProviders(ctx, &tokenvaultv1.ListProvidersRequest{})
	if err != nil {
		return nil, fmt.Errorf("client: list providers: %w", err)
	}
	return resp.GetProviders(), nil
}
