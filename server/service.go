package server

import (
	"context"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
)

// maxMinValid caps GetAccessToken's min_valid_for: asking for a token valid
// longer than most providers issue them would force a refresh on every call.
const maxMinValid = time.Hour

// tokenService implements TokenVaultService on a vault.
type tokenService struct {
	tvv1.UnimplementedTokenVaultServiceServer
	v         *vault.Vault
	providers []*tvv1.Provider
}

func (s *tokenService) GetAccessToken(ctx context.Context, req *tvv1.GetAccessTokenRequest) (*tvv1.GetAccessTokenResponse, error) {
	if req.GetConnectionId() == "" {
		return nil, invalidArgument("connection_id is required")
	}
	var minValid time.Duration
	if d := req.GetMinValidFor(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return nil, invalidArgument("min_valid_for must be a non-negative duration")
		}
		minValid = min(d.AsDuration(), maxMinValid)
	}
	tok, c, err := s.v.AccessToken(ctx, req.GetConnectionId(), req.GetCredential(), minValid, req.GetForceRefresh())
	if err != nil {
		return nil, toStatus(err)
	}
	scopes := tok.Scopes
	if len(scopes) == 0 {
		scopes = c.Grant.Scopes
	}
	resp := &tvv1.GetAccessTokenResponse{
		AccessToken:   tok.AccessToken,
		TokenType:     tok.TokenType,
		GrantedScopes: scopes,
		MissingScopes: c.MissingScopes(),
		Metadata:      c.Grant.Metadata,
		ConnectionId:  c.ID,
		Provider:      c.Provider,
	}
	if resp.TokenType == "" {
		resp.TokenType = "Bearer"
	}
	if !tok.Expiry.IsZero() {
		resp.ExpireTime = timestamppb.New(tok.Expiry)
	}
	return resp, nil
}

func (s *tokenService) StartConnect(ctx context.Context, req *tvv1.StartConnectRequest) (*tvv1.StartConnectResponse, error) {
	if req.GetOwner() == "" || req.GetProvider() == "" {
		return nil, invalidArgument("owner and provider are required")
	}
	u, exp, err := s.v.StartConnect(ctx, vault.ConnectRequest{
		Owner: req.GetOwner(), Tenant: req.GetTenant(), Provider: req.GetProvider(),
		Label: req.GetLabel(), Purpose: req.GetPurpose(), Scopes: req.GetScopes(),
		ReturnTo: req.GetReturnTo(), Options: req.GetOptions(),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.StartConnectResponse{AuthorizationUrl: u, ExpireTime: timestamppb.New(exp)}, nil
}

func (s *tokenService) GetConnection(ctx context.Context, req *tvv1.GetConnectionRequest) (*tvv1.GetConnectionResponse, error) {
	if req.GetConnectionId() == "" {
		return nil, invalidArgument("connection_id is required")
	}
	c, err := s.v.Get(ctx, req.GetConnectionId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.GetConnectionResponse{Connection: connectionProto(c)}, nil
}

func (s *tokenService) ListConnections(ctx context.Context, req *tvv1.ListConnectionsRequest) (*tvv1.ListConnectionsResponse, error) {
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidArgument("page_size must not be negative")
	case size == 0:
		size = 100
	case size > 1000:
		size = 1000
	}
	after, err := vault.ParsePageToken(req.GetPageToken())
	if err != nil {
		return nil, toStatus(err)
	}
	f := vault.Filter{Owner: req.GetOwner(), Tenant: req.GetTenant(), Provider: req.GetProvider(), Status: statusFromProto(req.GetStatus())}
	cs, next, err := s.v.List(ctx, f, after, size)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.ListConnectionsResponse{NextPageToken: vault.PageToken(next)}
	for _, c := range cs {
		resp.Connections = append(resp.Connections, connectionProto(c))
	}
	return resp, nil
}

func (s *tokenService) RevokeConnection(ctx context.Context, req *tvv1.RevokeConnectionRequest) (*tvv1.RevokeConnectionResponse, error) {
	if req.GetConnectionId() == "" {
		return nil, invalidArgument("connection_id is required")
	}
	res, err := s.v.Revoke(ctx, req.GetConnectionId(), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.RevokeConnectionResponse{Connection: connectionProto(res.Connection), ProviderRevoked: res.ProviderErr == nil}
	if res.ProviderErr != nil {
		resp.ProviderError = providerErrorText(res.ProviderErr)
	}
	return resp, nil
}

func (s *tokenService) ListProviders(ctx context.Context, req *tvv1.ListProvidersRequest) (*tvv1.ListProvidersResponse, error) {
	return &tvv1.ListProvidersResponse{Providers: s.providers}, nil
}

// adminService implements AdminService.
type adminService struct {
	tvv1.UnimplementedAdminServiceServer
	v *vault.Vault
}

func (s *adminService) RotateKeys(ctx context.Context, req *tvv1.RotateKeysRequest) (*tvv1.RotateKeysResponse, error) {
	term, n, err := s.v.RotateKeys(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.RotateKeysResponse{Term: term, Rewrapped: int64(n)}, nil
}

// providerErrorText says why a provider call failed without repeating
// anything the provider sent but its error code.
func providerErrorText(err error) string {
	if pe, ok := err.(*vault.ProviderError); ok {
		return pe.Error()
	}
	return "provider call failed"
}

func statusFromProto(s tvv1.ConnectionStatus) vault.Status {
	switch s {
	case tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE:
		return vault.StatusActive
	case tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH:
		return vault.StatusNeedsReauth
	case tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED:
		return vault.StatusRevoked
	}
	return ""
}

func statusToProto(s vault.Status) tvv1.ConnectionStatus {
	switch s {
	case vault.StatusActive:
		return tvv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE
	case vault.StatusNeedsReauth:
		return tvv1.ConnectionStatus_CONNECTION_STATUS_NEEDS_REAUTH
	case vault.StatusRevoked:
		return tvv1.ConnectionStatus_CONNECTION_STATUS_REVOKED
	}
	return tvv1.ConnectionStatus_CONNECTION_STATUS_UNSPECIFIED
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// connectionProto describes c without token material.
func connectionProto(c *vault.Connection) *tvv1.Connection {
	return &tvv1.Connection{
		ConnectionId:      c.ID,
		Owner:             c.Owner,
		Tenant:            c.Tenant,
		Provider:          c.Provider,
		Label:             c.Label,
		Purpose:           c.Purpose,
		Status:            statusToProto(c.Status),
		StatusReason:      c.StatusReason,
		RequestedScopes:   c.RequestedScopes,
		GrantedScopes:     c.Grant.Scopes,
		MissingScopes:     c.MissingScopes(),
		Account:           c.Grant.Account,
		Metadata:          c.Grant.Metadata,
		CreateTime:        ts(c.CreatedAt),
		UpdateTime:        ts(c.UpdatedAt),
		LastRefreshTime:   ts(c.LastRefreshedAt),
		LastUsedTime:      ts(c.LastUsedAt),
		LastValidatedTime: ts(c.LastValidatedAt),
		TokenExpireTime:   ts(c.Expiry()),
		Generation:        c.Generation,
		Credentials:       slices.Clone(c.Credentials()),
	}
}
