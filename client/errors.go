package client

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the sidecar's reasons.
const ErrorDomain = "tokenvault.dev"

// The reasons the sidecar puts in the google.rpc.ErrorInfo of its errors,
// with the gRPC code each comes with. The proto's package comment is the
// authoritative list.
const (
	// ReasonNotConnected: no such connection (NotFound), or it is revoked
	// (FailedPrecondition).
	ReasonNotConnected = "NOT_CONNECTED"
	// ReasonNeedsReauthorization: the provider rejected the grant; the end
	// user must connect again (FailedPrecondition).
	ReasonNeedsReauthorization = "NEEDS_REAUTHORIZATION"
	// ReasonProviderUnavailable: the provider failed transiently and no
	// valid token is at hand (Unavailable); retry later.
	ReasonProviderUnavailable = "PROVIDER_UNAVAILABLE"
	// ReasonProviderMisconfigured: the sidecar's client id, secret or
	// redirect URL is wrong at the provider (FailedPrecondition); an operator
	// must act, the user's grant is not at fault.
	ReasonProviderMisconfigured = "PROVIDER_MISCONFIGURED"
	// ReasonUnknownProvider: the named provider is not configured (NotFound).
	ReasonUnknownProvider = "UNKNOWN_PROVIDER"
	// ReasonInvalidArgument: the request is malformed (InvalidArgument).
	ReasonInvalidArgument = "INVALID_ARGUMENT"
	// ReasonReturnToNotAllowed: return_to is not on the allowlist
	// (InvalidArgument).
	ReasonReturnToNotAllowed = "RETURN_TO_NOT_ALLOWED"
	// ReasonConflict: the record changed concurrently (Aborted); retry.
	ReasonConflict = "CONFLICT"
	// ReasonRecordUnreadable: the connection's stored record does not open
	// (DataLoss): damaged or tampered with. Retrying is useless until an
	// operator restores or deletes it; other connections are served.
	ReasonRecordUnreadable = "RECORD_UNREADABLE"
)

// Reason returns the reason of the google.rpc.ErrorInfo with domain
// ErrorDomain carried by err's gRPC status, or "" if err is nil, carries no
// status, or its status has no such detail. err may wrap the status, as the
// errors of this package and *url.Error from an HTTPClient do.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	// status.FromError sees through wrapping; with a non-status error it
	// returns a status with no details.
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}

// IsReauthRequired reports whether err says the provider rejected the grant
// (ReasonNeedsReauthorization): retrying is useless, the end user must
// connect again, e.g. through StartConnect.
func IsReauthRequired(err error) bool {
	return Reason(err) == ReasonNeedsReauthorization
}

// IsNotConnected reports whether err says the connection does not exist or
// is revoked (ReasonNotConnected).
func IsNotConnected(err error) bool {
	return Reason(err) == ReasonNotConnected
}

// IsUnavailable reports whether retrying later may succeed: the provider
// failed transiently (ReasonProviderUnavailable) or the sidecar itself could
// not be reached (codes.Unavailable).
func IsUnavailable(err error) bool {
	return Reason(err) == ReasonProviderUnavailable || status.Code(err) == codes.Unavailable
}
