package server

import (
	"context"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
)

// The connection lifecycle beyond the connect flow: application metadata,
// erasure, import and the legacy token exchange (vault/lifecycle.go).

func (s *tokenService) UpdateConnection(ctx context.Context, req *tvv1.UpdateConnectionRequest) (*tvv1.UpdateConnectionResponse, error) {
	if req.GetConnectionId() == "" {
		return nil, invalidArgument("connection_id is required")
	}
	if len(req.GetSetAppMetadata()) == 0 && len(req.GetRemoveAppMetadata()) == 0 {
		return nil, invalidArgument("nothing to update: give set_app_metadata or remove_app_metadata")
	}
	c, err := s.v.Update(ctx, vault.UpdateRequest{ID: req.GetConnectionId(), Set: req.GetSetAppMetadata(), Remove: req.GetRemoveAppMetadata()})
	if err != nil {
		return nil, toStatus(err)
	}
	return &tvv1.UpdateConnectionResponse{Connection: connectionProto(c)}, nil
}

func (s *tokenService) DeleteConnection(ctx context.Context, req *tvv1.DeleteConnectionRequest) (*tvv1.DeleteConnectionResponse, error) {
	if req.GetConnectionId() == "" {
		return nil, invalidArgument("connection_id is required")
	}
	res, err := s.v.Delete(ctx, req.GetConnectionId(), req.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.DeleteConnectionResponse{ProviderRevoked: res.ProviderErr == nil}
	if res.ProviderErr != nil {
		resp.ProviderError = providerErrorText(res.ProviderErr)
	}
	return resp, nil
}

func (s *tokenService) DeleteOwner(ctx context.Context, req *tvv1.DeleteOwnerRequest) (*tvv1.DeleteOwnerResponse, error) {
	if req.GetOwner() == "" {
		return nil, invalidArgument("owner is required")
	}
	caller := CallerFromContext(ctx)
	if caller == nil || !caller.Limited() {
		ids, failures, err := s.v.DeleteOwner(ctx, req.GetOwner(), req.GetReason())
		if err != nil {
			return nil, toStatus(err)
		}
		return &tvv1.DeleteOwnerResponse{ConnectionIds: ids, ProviderFailures: int32(failures)}, nil
	}
	// A credential limited to some providers erases the owner's
	// connections of those providers only.
	resp := &tvv1.DeleteOwnerResponse{}
	for {
		cs, _, err := listAllowed(ctx, s.v, caller, vault.Filter{Owner: req.GetOwner()}, "", 100)
		if err != nil {
			return nil, toStatus(err)
		}
		if len(cs) == 0 {
			return resp, nil
		}
		for _, c := range cs {
			res, err := s.v.Delete(ctx, c.ID, req.GetReason())
			if err != nil {
				return nil, toStatus(err)
			}
			resp.ConnectionIds = append(resp.ConnectionIds, c.ID)
			if res.ProviderErr != nil {
				resp.ProviderFailures++
			}
		}
	}
}

func (s *adminService) ImportConnections(ctx context.Context, req *tvv1.ImportConnectionsRequest) (*tvv1.ImportConnectionsResponse, error) {
	n := len(req.GetConnections())
	if n == 0 {
		return nil, invalidArgument("connections: at least one record is required")
	}
	if n > vault.MaxImportBatch {
		return nil, invalidArgument("connections: at most 1000 records per call; send the rest in further calls")
	}
	recs := make([]vault.ImportRecord, n)
	for i, ic := range req.GetConnections() {
		r := vault.ImportRecord{
			Owner: ic.GetOwner(), Tenant: ic.GetTenant(), Provider: ic.GetProvider(), Label: ic.GetLabel(),
			Purpose: ic.GetPurpose(), Account: ic.GetAccount(), Metadata: ic.GetMetadata(),
			AppMetadata: ic.GetAppMetadata(), RequestedScopes: ic.GetRequestedScopes(),
		}
		for _, cr := range ic.GetCredentials() {
			t := vault.Token{Name: cr.GetName(), AccessToken: cr.GetAccessToken(), RefreshToken: cr.GetRefreshToken(),
				TokenType: cr.GetTokenType(), Scopes: cr.GetScopes()}
			if e := cr.GetExpireTime(); e != nil {
				t.Expiry = e.AsTime()
			}
			r.Tokens = append(r.Tokens, t)
		}
		recs[i] = r
	}
	createdBy := callerName(ctx)
	caller := CallerFromContext(ctx)
	// Records of providers a limited credential may not use are refused
	// one by one; the others go on.
	var denied []int
	allowed := recs[:0:0]
	for i, r := range recs {
		if caller != nil && caller.Limited() && !caller.AllowsProvider(r.Provider) {
			denied = append(denied, i)
			continue
		}
		allowed = append(allowed, r)
	}
	got, err := s.v.Import(ctx, allowed, vault.ImportOptions{DryRun: req.GetDryRun(), Verify: req.GetVerify(), CreatedBy: createdBy})
	if err != nil {
		return nil, toStatus(err)
	}
	res := make([]vault.ImportResult, 0, n)
	for i := range recs {
		if len(denied) > 0 && denied[0] == i {
			denied = denied[1:]
			res = append(res, vault.ImportResult{Outcome: vault.ImportRefused, Reason: "the credential may not use this provider"})
			continue
		}
		res, got = append(res, got[0]), got[1:]
	}
	resp := &tvv1.ImportConnectionsResponse{Results: make([]*tvv1.ImportResult, len(res))}
	for i, r := range res {
		resp.Results[i] = &tvv1.ImportResult{
			Index: int32(i), Outcome: importOutcomeProto(r.Outcome), ConnectionId: r.ConnectionID,
			Reason: r.Reason, Status: statusToProto(r.Status),
		}
	}
	return resp, nil
}

func importOutcomeProto(o vault.ImportOutcome) tvv1.ImportOutcome {
	switch o {
	case vault.ImportImported:
		return tvv1.ImportOutcome_IMPORT_OUTCOME_IMPORTED
	case vault.ImportDuplicate:
		return tvv1.ImportOutcome_IMPORT_OUTCOME_DUPLICATE
	case vault.ImportRefused:
		return tvv1.ImportOutcome_IMPORT_OUTCOME_REFUSED
	case vault.ImportValid:
		return tvv1.ImportOutcome_IMPORT_OUTCOME_VALID
	}
	return tvv1.ImportOutcome_IMPORT_OUTCOME_UNSPECIFIED
}

func (s *adminService) ExchangeLegacyTokens(ctx context.Context, req *tvv1.ExchangeLegacyTokensRequest) (*tvv1.ExchangeLegacyTokensResponse, error) {
	if req.GetProvider() == "" {
		return nil, invalidArgument("provider is required")
	}
	res, err := s.v.ExchangeLegacy(ctx, req.GetProvider(), req.GetDryRun())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &tvv1.ExchangeLegacyTokensResponse{Results: make([]*tvv1.ExchangeResult, len(res))}
	for i, r := range res {
		resp.Results[i] = &tvv1.ExchangeResult{ConnectionId: r.ConnectionID, Outcome: r.Outcome, Reason: r.Reason}
	}
	return resp, nil
}

// callerName is the name of the call's credential, "" if no access check
// ran.
func callerName(ctx context.Context) string {
	if c := CallerFromContext(ctx); c != nil {
		return c.Name
	}
	return ""
}
