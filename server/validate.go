package server

import (
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
)

// A bound is what one request field may hold. Every string is valid UTF-8
// (protobuf checks that) without control characters, except that text
// fields may hold tabs and line breaks.
type bound struct {
	maxLen   int           // bytes of a string, of each element of a list, of each map value
	maxItems int           // elements of a list, entries of a map
	maxKey   int           // bytes of each map key
	text     bool          // tabs and line breaks allowed
	maxDur   time.Duration // a google.protobuf.Duration: from 0 to maxDur
	nested   bool          // a message of ours: its fields have rows of their own
	// records: a list of messages the handler checks one by one, refusing
	// each bad one with its own reason and going on with the others
	// (ImportConnections); only their count is bounded here.
	records bool
}

// maxMinValid caps GetAccessToken's min_valid_for: asking for a token valid
// longer than most providers issue them would force a refresh on every call.
// More is refused, not clamped: a caller that asks for more learns it at once.
const maxMinValid = time.Hour

// Bounds shared by the fields of several requests.
var (
	boundID       = bound{maxLen: 128} // connection ids: the vault makes them, far shorter
	boundName     = bound{maxLen: 64}  // provider and credential names, event types
	boundOwner    = bound{maxLen: 256} // the application's user and tenant ids
	boundToken    = bound{maxLen: 512} // page tokens: the vault's are far shorter
	boundLabel    = bound{maxLen: 128} //
	boundText     = bound{maxLen: 1024, text: true}
	boundURL      = bound{maxLen: 2048} // return_to: what browsers accept in practice
	boundScopes   = bound{maxLen: 256, maxItems: 100}
	boundOptions  = bound{maxLen: 1024, maxItems: 32, maxKey: 64}
	boundEvTypes  = bound{maxLen: 64, maxItems: 32}
	boundMinValid = bound{maxDur: maxMinValid}
	boundNested   = bound{nested: true}
	boundAppMeta  = bound{maxLen: 256, maxItems: 32, maxKey: 64} // vault.CheckAppMetadata is stricter
	boundAppKeys  = bound{maxLen: 64, maxItems: 32}
	boundRecords  = bound{maxItems: 1000, records: true}
	// a connect session's providers, and its life (vault.MaxSessionTTL)
	boundProviders  = bound{maxLen: 64, maxItems: 64}
	boundSessionTTL = bound{maxDur: time.Hour}
	// a master key: 32 raw bytes, or 64 hex or 44 base64 characters, with
	// some whitespace around
	boundMasterKey = bound{maxLen: 128}
)

// fieldBounds is THE validation table: every string, repeated, map and
// message field of every request of TokenVaultService and AdminService, and
// what it may hold. The access check applies it to each request after
// authentication and before anything else (the provider limit, the audit,
// the handler): a field out of bounds is refused with INVALID_ARGUMENT
// whose message names the field, never repeats its value, and nothing of
// the call is audited or stored. A field missing here is refused whatever
// it holds; TestValidate_EveryFieldHasABound keeps the table complete.
// Scalars (integers, booleans, enums) need no row: their handlers check
// their ranges.
var fieldBounds = map[protoreflect.FullName]bound{
	"tokenvault.v1.GetAccessTokenRequest.connection_id": boundID,
	"tokenvault.v1.GetAccessTokenRequest.min_valid_for": boundMinValid,
	"tokenvault.v1.GetAccessTokenRequest.credential":    boundName,
	"tokenvault.v1.GetAccessTokenRequest.selector":      boundNested,

	"tokenvault.v1.ConnectionSelector.owner":    boundOwner,
	"tokenvault.v1.ConnectionSelector.provider": boundName,
	"tokenvault.v1.ConnectionSelector.label":    boundLabel,
	"tokenvault.v1.ConnectionSelector.tenant":   boundOwner,

	"tokenvault.v1.StartConnectRequest.owner":        boundOwner,
	"tokenvault.v1.StartConnectRequest.tenant":       boundOwner,
	"tokenvault.v1.StartConnectRequest.provider":     boundName,
	"tokenvault.v1.StartConnectRequest.scopes":       boundScopes,
	"tokenvault.v1.StartConnectRequest.return_to":    boundURL,
	"tokenvault.v1.StartConnectRequest.label":        boundLabel,
	"tokenvault.v1.StartConnectRequest.purpose":      boundText,
	"tokenvault.v1.StartConnectRequest.options":      boundOptions,
	"tokenvault.v1.StartConnectRequest.app_metadata": boundAppMeta,

	"tokenvault.v1.CreateConnectSessionRequest.owner":        boundOwner,
	"tokenvault.v1.CreateConnectSessionRequest.tenant":       boundOwner,
	"tokenvault.v1.CreateConnectSessionRequest.providers":    boundProviders,
	"tokenvault.v1.CreateConnectSessionRequest.return_to":    boundURL,
	"tokenvault.v1.CreateConnectSessionRequest.ttl":          boundSessionTTL,
	"tokenvault.v1.CreateConnectSessionRequest.app_metadata": boundAppMeta,

	"tokenvault.v1.GetConnectionRequest.connection_id": boundID,
	"tokenvault.v1.GetConnectionRequest.selector":      boundNested,

	"tokenvault.v1.ListConnectionsRequest.owner":        boundOwner,
	"tokenvault.v1.ListConnectionsRequest.provider":     boundName,
	"tokenvault.v1.ListConnectionsRequest.tenant":       boundOwner,
	"tokenvault.v1.ListConnectionsRequest.page_token":   boundToken,
	"tokenvault.v1.ListConnectionsRequest.app_metadata": boundAppMeta,

	"tokenvault.v1.UpdateConnectionRequest.connection_id":       boundID,
	"tokenvault.v1.UpdateConnectionRequest.set_app_metadata":    boundAppMeta,
	"tokenvault.v1.UpdateConnectionRequest.remove_app_metadata": boundAppKeys,

	"tokenvault.v1.DeleteConnectionRequest.connection_id": boundID,
	"tokenvault.v1.DeleteConnectionRequest.reason":        boundText,
	"tokenvault.v1.DeleteOwnerRequest.owner":              boundOwner,
	"tokenvault.v1.DeleteOwnerRequest.reason":             boundText,

	// Each record is checked by the vault, and refused on its own.
	"tokenvault.v1.ImportConnectionsRequest.connections": boundRecords,
	"tokenvault.v1.ExchangeLegacyTokensRequest.provider": boundName,

	"tokenvault.v1.RevokeConnectionRequest.connection_id": boundID,
	"tokenvault.v1.RevokeConnectionRequest.reason":        boundText,

	"tokenvault.v1.ValidateConnectionRequest.connection_id": boundID,

	"tokenvault.v1.WatchEventsRequest.types": boundEvTypes,

	"tokenvault.v1.RekeyMasterRequest.new_master_key":    boundMasterKey,
	"tokenvault.v1.ListAuditEventsRequest.connection_id": boundID,
	"tokenvault.v1.ListAuditEventsRequest.caller":        boundOwner,
	"tokenvault.v1.ListAuditEventsRequest.method":        boundOwner,
	"tokenvault.v1.ListAuditEventsRequest.page_token":    boundToken,
}

// validateRequest checks every set field of m against fieldBounds. It
// returns nil or an INVALID_ARGUMENT status naming the first field out of
// bounds (a nested one by its path, "selector.owner").
func validateRequest(m proto.Message) error {
	return validateMessage("", m.ProtoReflect())
}

func validateMessage(prefix string, m protoreflect.Message) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		err = checkField(prefix, fd, v)
		return err == nil
	})
	return err
}

func checkField(prefix string, fd protoreflect.FieldDescriptor, v protoreflect.Value) error {
	name := prefix + string(fd.Name())
	b, ok := fieldBounds[fd.FullName()]
	if !ok {
		if !fd.IsList() && !fd.IsMap() && fd.Kind() != protoreflect.StringKind &&
			fd.Kind() != protoreflect.BytesKind && fd.Kind() != protoreflect.MessageKind {
			return nil // a scalar
		}
		return fieldViolation(name, "is not accepted by this sidecar")
	}
	switch {
	case fd.IsMap():
		m := v.Map()
		if m.Len() > b.maxItems {
			return fieldViolation(name, fmt.Sprintf("has more than %d entries", b.maxItems))
		}
		var err error
		m.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			if err = checkString(name+" key", k.String(), bound{maxLen: b.maxKey}); err == nil {
				err = checkString(name+" value", v.String(), b)
			}
			return err == nil
		})
		return err
	case fd.IsList():
		l := v.List()
		if l.Len() > b.maxItems {
			return fieldViolation(name, fmt.Sprintf("has more than %d elements", b.maxItems))
		}
		if b.records {
			return nil
		}
		for i := range l.Len() {
			if err := checkString(name, l.Get(i).String(), b); err != nil {
				return err
			}
		}
		return nil
	case fd.Kind() == protoreflect.StringKind:
		return checkString(name, v.String(), b)
	case fd.Kind() == protoreflect.BytesKind:
		if len(v.Bytes()) > b.maxLen {
			return fieldViolation(name, fmt.Sprintf("is longer than %d bytes", b.maxLen))
		}
		return nil
	case fd.Kind() == protoreflect.MessageKind && b.nested:
		return validateMessage(name+".", v.Message())
	case fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == "google.protobuf.Duration" && b.maxDur > 0:
		d, _ := v.Message().Interface().(*durationpb.Duration)
		if d == nil || d.CheckValid() != nil || d.AsDuration() < 0 || d.AsDuration() > b.maxDur {
			return fieldViolation(name, fmt.Sprintf("must be a duration from 0 to %v", b.maxDur))
		}
		return nil
	}
	return fieldViolation(name, "is not accepted by this sidecar")
}

// checkString checks one string against b.
func checkString(field, s string, b bound) error {
	if len(s) > b.maxLen {
		return fieldViolation(field, fmt.Sprintf("is longer than %d bytes", b.maxLen))
	}
	for i, r := range s {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				return fieldViolation(field, "is not valid UTF-8")
			}
		}
		if unicode.IsControl(r) && !(b.text && (r == '\t' || r == '\n' || r == '\r')) {
			return fieldViolation(field, "holds a control character")
		}
	}
	return nil
}

// fieldViolation is the INVALID_ARGUMENT status of a field out of bounds,
// with the field named in a BadRequest detail beside the ErrorInfo.
func fieldViolation(field, what string) error {
	msg := "request field " + field + " " + what
	st := status.New(codes.InvalidArgument, msg)
	if d, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: ReasonInvalidArgument, Domain: ErrorDomain},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: what}}},
	); err == nil {
		st = d
	}
	return st.Err()
}
