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
	ids, failures, err := s.v.DeleteOwner(ctx, req.GetOwner(), req.GetReason())
	resp := &tvv1.DeleteOwnerResponse{ConnectionIds: ids, ProviderFailures: int32(failures)}
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
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
	createdBy := ""
	if c := CallerFromContext(ctx); c != nil {
		createdBy = c.Name
	}
	res, err := s.v.Import(ctx, recs, vault.ImportOptions{DryRun: req.GetDryRun(), Verify: req.GetVerify(), CreatedBy: createdBy})
	if err != nil {
		return nil, toStatus(err)
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
