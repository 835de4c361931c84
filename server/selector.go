package server

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/grpc/codes"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
)

// A selectable request names one connection by id or by a
// ConnectionSelector (GetAccessToken, GetConnection).
type selectable interface {
	GetConnectionId() string
	GetSelector() *tvv1.ConnectionSelector
}

// connectionID returns the id of the connection req names: its
// connection_id, or the one connection its selector matches. Exactly one of
// the two must be set. Errors are statuses: INVALID_ARGUMENT for both or
// neither, a selector without owner or provider, or one that matches
// several connections (metadata "connections": how many); NOT_CONNECTED if
// the selector matches none. The validation table (validate.go) bounded
// every field before. A resolved id is told to the gate (noteConnection)
// for the audit record.
func (s *tokenService) connectionID(ctx context.Context, req selectable) (string, error) {
	id, sel := req.GetConnectionId(), req.GetSelector()
	switch {
	case id != "" && sel != nil:
		return "", invalidArgument("set connection_id or selector, not both")
	case id != "":
		return id, nil
	case sel == nil:
		return "", invalidArgument("connection_id or selector is required")
	case sel.GetOwner() == "" || sel.GetProvider() == "":
		return "", invalidArgument("selector.owner and selector.provider are required")
	}
	id, err := s.lookup(ctx, sel)
	if err != nil {
		return "", err
	}
	noteConnection(ctx, id)
	return id, nil
}

// lookup finds the one connection sel matches, in the vault's owner index
// (a memory read, as by id).
func (s *tokenService) lookup(ctx context.Context, sel *tvv1.ConnectionSelector) (string, error) {
	id, err := s.v.Lookup(ctx, vault.Selector{
		Owner: sel.GetOwner(), Provider: sel.GetProvider(), Label: sel.GetLabel(), Tenant: sel.GetTenant(),
	})
	var amb *vault.AmbiguousError
	if errors.As(err, &amb) {
		return "", ambiguousStatus(amb.Connections, amb.Labels)
	}
	return id, toStatus(err)
}

// ambiguousStatus is the answer to a selector that matches n connections.
func ambiguousStatus(n int, labels int) error {
	return statusWithReason(codes.InvalidArgument, ReasonInvalidArgument,
		"the selector matches "+strconv.Itoa(n)+" connections ("+strconv.Itoa(labels)+
			" distinct labels); set selector.label (or selector.tenant) to name one, or use connection_id",
		map[string]string{"connections": strconv.Itoa(n), "labels": strconv.Itoa(labels)})
}
