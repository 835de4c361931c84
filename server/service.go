package server

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/server/connectpage"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
	"github.com/tokenvault/tokenvault/vault/seal"
)

// tokenService implements TokenVaultService on a vault.
type tokenService struct {
	tvv1.UnimplementedTokenVaultServiceServer
	v         *vault.Vault
	providers []*tvv1.Provider
	publicURL string          // the public listener's URL: the connect page's links
	stopping  <-chan struct{} // closed when the server stops: WatchEvents ends
}

func (s *tokenService) GetAccessToken(ctx context.Context, req *tvv1.GetAccessTokenRequest) (*tvv1.GetAccessTokenResponse, error) {
	var minValid time.Duration
	if d := req.GetMinValidFor(); d != nil {
		// The validation table refused anything out of range before the
		// call got here; this stays for calls that did not pass it.
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > maxMinValid {
			return nil, invalidArgument("min_valid_for must be a duration from 0 to 1h")
		}
		minValid = d.AsDuration()
	}
	id, err := s.connectionID(ctx, req)
	if err != nil {
		return nil, err
	}
	tok, info, err := s.v.AccessToken(ctx, vault.TokenRequest{ID: id, Credential: req.GetCredential(), MinValid: minValid, Force: req.GetForceRefresh()})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.GetAccessTokenResponse{
		AccessToken:   tok.AccessToken,
		TokenType:     tok.TokenType,
		GrantedScopes: info.GrantedScopes,
		MissingScopes: info.MissingScopes,
		Metadata:      info.Metadata,
		ConnectionId:  info.ConnectionID,
		Provider:      info.Provider,
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
		AppMetadata: req.GetAppMetadata(), CreatedBy: callerName(ctx),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.StartConnectResponse{AuthorizationUrl: u, ExpireTime: timestamppb.New(exp)}, nil
}

// CreateConnectSession stores a connect session for the owner and returns
// the page's link. A credential limited to some providers gets a page
// offering only those. The token is in the answer only: the audit record
// and the log have the method, the caller and the outcome.
func (s *tokenService) CreateConnectSession(ctx context.Context, req *tvv1.CreateConnectSessionRequest) (*tvv1.CreateConnectSessionResponse, error) {
	if req.GetOwner() == "" {
		return nil, invalidArgument("owner is required")
	}
	if s.publicURL == "" {
		return nil, statusWithReason(codes.FailedPrecondition, ReasonInvalidArgument, "the connect page is not served: no public URL is configured", nil)
	}
	var ttl time.Duration
	if d := req.GetTtl(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > vault.MaxSessionTTL {
			return nil, invalidArgument("ttl must be a duration from 0 to 1h")
		}
		ttl = d.AsDuration()
	}
	provs := slices.Clone(req.GetProviders())
	c := CallerFromContext(ctx)
	if c != nil && c.Limited() {
		for _, p := range provs {
			if !c.AllowsProvider(p) {
				return nil, accessErrors().providerDenied
			}
		}
		if len(provs) == 0 {
			for _, p := range s.providers {
				if c.AllowsProvider(p.Name) {
					provs = append(provs, p.Name)
				}
			}
			if len(provs) == 0 {
				// None of its providers is configured: an empty list
				// would offer every provider.
				return nil, accessErrors().providerDenied
			}
		}
	}
	tok, cs, err := s.v.CreateSession(ctx, vault.SessionRequest{
		Owner: req.GetOwner(), Tenant: req.GetTenant(), Providers: provs, ReturnTo: req.GetReturnTo(),
		AllowDisconnect: req.GetAllowDisconnect(), TTL: ttl, AppMetadata: req.GetAppMetadata(), CreatedBy: callerName(ctx),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.CreateConnectSessionResponse{Url: connectpage.SessionURL(s.publicURL, tok), ExpireTime: timestamppb.New(cs.Expires)}, nil
}

func (s *tokenService) GetConnection(ctx context.Context, req *tvv1.GetConnectionRequest) (*tvv1.GetConnectionResponse, error) {
	id, err := s.connectionID(ctx, req)
	if err != nil {
		return nil, err
	}
	c, err := s.v.Get(ctx, id)
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
	f := vault.Filter{Owner: req.GetOwner(), Tenant: req.GetTenant(), Provider: req.GetProvider(), Status: statusFromProto(req.GetStatus()), App: req.GetAppMetadata()}
	cs, next, err := listAllowed(ctx, s.v, CallerFromContext(ctx), f, after, size)
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

// ValidateConnection asks the provider about the grant now. A grant that is
// dead, whether the provider said so now or earlier, is an answer (live
// false, the connection in NEEDS_REAUTH), not an error.
func (s *tokenService) ValidateConnection(ctx context.Context, req *tvv1.ValidateConnectionRequest) (*tvv1.ValidateConnectionResponse, error) {
	id := req.GetConnectionId()
	if id == "" {
		return nil, invalidArgument("connection_id is required")
	}
	c, err := s.v.Validate(ctx, id)
	live := err == nil
	if errors.Is(err, vault.ErrReauthRequired) {
		c, err = s.v.Get(ctx, id)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.ValidateConnectionResponse{Connection: connectionProto(c), Live: live}, nil
}

// listAllowed lists like vault.List, leaving out the connections of
// providers a limited caller may not see; a page may then take several
// vault pages. A nil caller (no access check ran) sees everything.
func listAllowed(ctx context.Context, v *vault.Vault, c *Caller, f vault.Filter, after string, size int) ([]*vault.Connection, string, error) {
	if c == nil || !c.Limited() {
		return v.List(ctx, f, after, size)
	}
	if f.Provider != "" && !c.AllowsProvider(f.Provider) {
		return nil, "", nil // nothing of that provider is visible
	}
	var out []*vault.Connection
	// Each round moves the cursor forward by a full vault page, so the
	// loop ends after at most (connections / size) + 1 rounds.
	for {
		cs, next, err := v.List(ctx, f, after, size)
		if err != nil {
			return nil, "", err
		}
		for _, conn := range cs {
			if !c.AllowsProvider(conn.Provider) {
				continue
			}
			if len(out) == size {
				return out, out[len(out)-1].ID, nil
			}
			out = append(out, conn)
		}
		if next == "" {
			return out, "", nil
		}
		after = next
	}
}

func (s *tokenService) ListProviders(ctx context.Context, req *tvv1.ListProvidersRequest) (*tvv1.ListProvidersResponse, error) {
	c := CallerFromContext(ctx)
	if c == nil || !c.Limited() {
		return &tvv1.ListProvidersResponse{Providers: s.providers}, nil
	}
	resp := &tvv1.ListProvidersResponse{}
	for _, p := range s.providers {
		if c.AllowsProvider(p.Name) {
			resp.Providers = append(resp.Providers, p)
		}
	}
	return resp, nil
}

// adminService implements AdminService.
type adminService struct {
	tvv1.UnimplementedAdminServiceServer
	v     *vault.Vault
	audit *audit.Log
}

func (s *adminService) ListAuditEvents(ctx context.Context, req *tvv1.ListAuditEventsRequest) (*tvv1.ListAuditEventsResponse, error) {
	if s.audit == nil {
		return nil, statusWithReason(codes.FailedPrecondition, ReasonInvalidArgument, "audit is not enabled on this sidecar", nil)
	}
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
	// Include what is still queued: an operator who just revoked expects
	// to see it.
	if err := s.audit.Flush(ctx); err != nil {
		return nil, toStatus(err)
	}
	f := audit.Filter{ConnectionID: req.GetConnectionId(), Caller: req.GetCaller(), Method: req.GetMethod()}
	recs, next, err := s.audit.List(ctx, f, after, size)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.ListAuditEventsResponse{NextPageToken: vault.PageToken(next), Events: make([]*tvv1.AuditEvent, 0, len(recs))}
	bytes := 0
	for i, r := range recs {
		ev := &tvv1.AuditEvent{
			AuditId: r.ID, Time: timestamppb.New(r.Time), Caller: r.Caller, Role: r.Role,
			Method: r.Method, ConnectionId: r.ConnectionID, Provider: r.Provider,
			Outcome: r.Outcome, Reason: r.Reason,
		}
		// Paged by size as well as count: a page stays well under the
		// 4 MiB a gRPC client takes by default, whatever the records hold.
		if bytes += proto.Size(ev) + 8; bytes > maxAuditPageBytes && i > 0 {
			resp.NextPageToken = vault.PageToken(recs[i-1].ID)
			break
		}
		resp.Events = append(resp.Events, ev)
	}
	return resp, nil
}

// maxAuditPageBytes bounds the encoded events of one ListAuditEvents page.
const maxAuditPageBytes = 1 << 20

func (s *adminService) RotateKeys(ctx context.Context, req *tvv1.RotateKeysRequest) (*tvv1.RotateKeysResponse, error) {
	term, n, err := s.v.RotateKeys(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.RotateKeysResponse{Term: term, Rewrapped: int64(n)}, nil
}

// needUnlimited refuses a caller limited to some providers: the call
// concerns every provider's connections (the keyring, quarantined records
// whose provider cannot be read).
func needUnlimited(ctx context.Context) error {
	if c := CallerFromContext(ctx); c != nil && c.Limited() {
		return statusWithReason(codes.PermissionDenied, ReasonPermissionDenied, "this call concerns every provider; the credential is limited to some", nil)
	}
	return nil
}

func (s *adminService) RetireKeys(ctx context.Context, req *tvv1.RetireKeysRequest) (*tvv1.RetireKeysResponse, error) {
	if err := needUnlimited(ctx); err != nil {
		return nil, err
	}
	term, dropped, err := s.v.RetireKeys(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.RetireKeysResponse{Term: term, RetiredTerms: dropped}, nil
}

func (s *adminService) RekeyMaster(ctx context.Context, req *tvv1.RekeyMasterRequest) (*tvv1.RekeyMasterResponse, error) {
	if err := needUnlimited(ctx); err != nil {
		clear(req.NewMasterKey)
		return nil, err
	}
	mk, err := seal.ParseMasterKey(req.NewMasterKey)
	clear(req.NewMasterKey)
	if err != nil {
		// ParseMasterKey's errors never include the input.
		return nil, invalidArgument("new_master_key: " + strings.TrimPrefix(err.Error(), "seal: "))
	}
	defer clear(mk[:])
	if err := s.v.RekeyMaster(ctx, mk); err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.RekeyMasterResponse{MasterKeyId: mk.ID()}, nil
}

// maxUnreadableListed bounds ListUnreadableRecords's answer.
const maxUnreadableListed = 1000

func (s *adminService) ListUnreadableRecords(ctx context.Context, req *tvv1.ListUnreadableRecordsRequest) (*tvv1.ListUnreadableRecordsResponse, error) {
	if err := needUnlimited(ctx); err != nil {
		return nil, err
	}
	if err := s.v.WaitLoaded(ctx); err != nil {
		return nil, toStatus(err) // what is unreadable is known once the load has read every record
	}
	recs := s.v.Unreadable()
	resp := &tvv1.ListUnreadableRecordsResponse{Total: int64(len(recs))}
	for _, r := range recs[:min(len(recs), maxUnreadableListed)] {
		resp.Records = append(resp.Records, &tvv1.UnreadableRecord{
			Key: r.Key, ConnectionId: r.ConnectionID, Reason: r.Reason, SinceTime: timestamppb.New(r.Since),
		})
	}
	return resp, nil
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
		AppMetadata:       c.AppMetadata,
		CreatedBy:         c.CreatedBy,
		Imported:          c.Imported,
	}
}
