package server

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenvault/tokenvault/vault"
)

// ErrorDomain is the ErrorInfo domain of every tokenvault error.
const ErrorDomain = "tokenvault.dev"

// ErrorInfo reasons; the proto's package comment documents them, and the
// README the three of access control (UNAUTHENTICATED, PERMISSION_DENIED,
// RATE_LIMITED).
const (
	ReasonNotConnected          = "NOT_CONNECTED"
	ReasonNeedsReauthorization  = "NEEDS_REAUTHORIZATION"
	ReasonProviderUnavailable   = "PROVIDER_UNAVAILABLE"
	ReasonProviderMisconfigured = "PROVIDER_MISCONFIGURED"
	ReasonUnknownProvider       = "UNKNOWN_PROVIDER"
	ReasonInvalidArgument       = "INVALID_ARGUMENT"
	ReasonReturnToNotAllowed    = "RETURN_TO_NOT_ALLOWED"
	ReasonConflict              = "CONFLICT"
	ReasonInternal              = "INTERNAL"
	// ReasonRecordUnreadable: the connection's stored record does not open
	// (DATA_LOSS: damaged or tampered with, not something a retry fixes);
	// it is quarantined and every other connection is served. Metadata
	// "cause" says why (authentication_failed, bad_framing, ...).
	ReasonRecordUnreadable = "RECORD_UNREADABLE"
	// ReasonKeyTermInUse: RetireKeys found values still sealed under a
	// term to retire (FAILED_PRECONDITION).
	ReasonKeyTermInUse = "KEY_TERM_IN_USE"
	// ReasonUnauthenticated: no credential, or an unknown one
	// (UNAUTHENTICATED).
	ReasonUnauthenticated = "UNAUTHENTICATED"
	// ReasonPermissionDenied: the credential's role or provider limit does
	// not allow the call (PERMISSION_DENIED).
	ReasonPermissionDenied = "PERMISSION_DENIED"
	// ReasonRateLimited: the credential's rate limit is exhausted
	// (RESOURCE_EXHAUSTED); retry_after_seconds in metadata.
	ReasonRateLimited = "RATE_LIMITED"
)

// toStatus is the one place a domain error becomes a gRPC status. The
// message says what happened in our words; provider bodies, tokens and
// internal error text never reach it.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var (
		code   codes.Code
		reason string
		msg    string
		meta   map[string]string
	)
	var pe *vault.ProviderError
	if errors.As(err, &pe) {
		meta = map[string]string{"provider_code": pe.Code}
		if pe.RetryAfter > 0 {
			meta["retry_after_seconds"] = strconv.Itoa(int(pe.RetryAfter.Seconds() + 0.999))
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code, reason, msg = codes.DeadlineExceeded, ReasonProviderUnavailable, "deadline exceeded"
	case errors.Is(err, context.Canceled):
		code, reason, msg = codes.Canceled, ReasonInternal, "canceled"
	case errors.Is(err, vault.ErrNotFound):
		code, reason, msg = codes.NotFound, ReasonNotConnected, "no such connection"
	case errors.Is(err, vault.ErrRevoked):
		code, reason, msg = codes.FailedPrecondition, ReasonNotConnected, "the connection was revoked"
	case errors.Is(err, vault.ErrReauthRequired):
		code, reason, msg = codes.FailedPrecondition, ReasonNeedsReauthorization, "the provider rejected the grant; the user must connect again"
	case errors.Is(err, vault.ErrMisconfigured):
		code, reason, msg = codes.FailedPrecondition, ReasonProviderMisconfigured, "the provider rejected tokenvault's client configuration; an operator must fix it"
	case errors.Is(err, vault.ErrUnavailable):
		code, reason, msg = codes.Unavailable, ReasonProviderUnavailable, "the provider is unavailable and no valid token is at hand; retry later"
	case errors.Is(err, vault.ErrUnknownProvider):
		code, reason, msg = codes.NotFound, ReasonUnknownProvider, "no such provider is configured"
	case errors.Is(err, vault.ErrReturnToNotAllowed):
		code, reason, msg = codes.InvalidArgument, ReasonReturnToNotAllowed, "return_to is not on the allowlist"
	case errors.Is(err, vault.ErrInvalidArgument):
		code, reason, msg = codes.InvalidArgument, ReasonInvalidArgument, safeMessage(err)
	case errors.Is(err, vault.ErrRecordUnreadable):
		code, reason, msg = codes.DataLoss, ReasonRecordUnreadable,
			"the connection's stored record does not open (damaged or tampered with); an operator must restore it from a backup or delete the connection"
		var ue *vault.UnreadableError
		if errors.As(err, &ue) {
			meta = map[string]string{"cause": ue.Reason}
		}
	case errors.Is(err, vault.ErrKeyTermInUse):
		code, reason, msg = codes.FailedPrecondition, ReasonKeyTermInUse, "stored values are still sealed under a key term to retire; rotate keys (which re-wraps them) or delete the quarantined records first"
		var te *vault.TermInUseError
		if errors.As(err, &te) {
			meta = map[string]string{}
			for t, n := range te.Values {
				meta["term_"+strconv.FormatUint(uint64(t), 10)] = strconv.Itoa(n)
			}
		}
	case errors.Is(err, vault.ErrConflict):
		code, reason, msg = codes.Aborted, ReasonConflict, "the record changed concurrently; retry"
	default:
		code, reason, msg = codes.Internal, ReasonInternal, "internal error"
	}
	return statusWithReason(code, reason, msg, meta)
}

// safeMessage returns the text of an ErrInvalidArgument error. The vault
// builds those from the request alone, never from secrets or provider
// answers.
func safeMessage(err error) string {
	return err.Error()
}

func statusWithReason(code codes.Code, reason, msg string, meta map[string]string) error {
	st := status.New(code, msg)
	if d, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta}); err == nil {
		st = d
	}
	return st.Err()
}

// statusCode returns the gRPC code of err (OK for nil).
func statusCode(err error) codes.Code { return status.Code(err) }

// errorReason returns the ErrorInfo reason of a status error, or "".
func errorReason(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetDomain() == ErrorDomain {
			return ei.GetReason()
		}
	}
	return ""
}

func invalidArgument(msg string) error {
	return statusWithReason(codes.InvalidArgument, ReasonInvalidArgument, msg, nil)
}
