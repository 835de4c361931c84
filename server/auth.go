package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// Role is what a credential may do. An operator may do everything an
// application may.
type Role uint8

const (
	// RoleApplication reads tokens, starts connect flows, and reads the
	// connections (and events) of its providers.
	RoleApplication Role = iota + 1
	// RoleOperator may also revoke, read the audit, rotate keys, and list
	// every connection.
	RoleOperator
)

func (r Role) String() string {
	switch r {
	case RoleApplication:
		return "application"
	case RoleOperator:
		return "operator"
	}
	return "none"
}

// ParseRole parses "application" or "operator".
func ParseRole(s string) (Role, error) {
	switch s {
	case "application":
		return RoleApplication, nil
	case "operator":
		return RoleOperator, nil
	}
	return 0, fmt.Errorf("unknown role %q (want application or operator)", s)
}

// Access is what one credential may do.
type Access struct {
	Role Role
	// Providers, if not empty, limits the credential to these providers:
	// their connect flows and their connections. Others' connections
	// answer NOT_FOUND, as if they did not exist, and are left out of
	// listings.
	Providers []string
	// RateLimit bounds the credential's calls; the zero value is no limit.
	RateLimit RateLimit
}

// RateLimit is a token bucket: RPS calls a second on average, bursts of up
// to Burst (default: RPS rounded up, at least 1).
type RateLimit struct {
	RPS   float64
	Burst int
}

// An APIKey is a credential presented as "authorization: Bearer <Key>".
type APIKey struct {
	// Name identifies the caller in the audit and in metrics; never the
	// key itself.
	Name string
	Key  string
	Access
}

// A Peer is a credential proven by the kernel on a unix socket: the
// connecting process's uid (SO_PEERCRED). Its caller name is "uid:<UID>".
type Peer struct {
	UID uint32
	Access
}

// minKeyLen is the shortest API key accepted: 128 bits of base32 or hex
// take at least 26 characters; 20 leaves room for other encodings and still
// refuses passwords.
const minKeyLen = 20

// An Auth knows every credential. It keeps only the SHA-256 of each API
// key. Build it with NewAuth; it is read-only afterwards and safe for
// concurrent use.
type Auth struct {
	keys  map[[sha256.Size]byte]*Caller
	peers map[uint32]*Caller
}

// NewAuth checks the credentials and returns an Auth for them. Names must
// be unique and keys distinct and at least 20 characters long; the errors
// never contain a key.
func NewAuth(keys []APIKey, peers []Peer) (*Auth, error) {
	a := &Auth{keys: make(map[[sha256.Size]byte]*Caller, len(keys)), peers: make(map[uint32]*Caller, len(peers))}
	names := map[string]bool{}
	for _, k := range keys {
		if k.Name == "" || strings.HasPrefix(k.Name, "uid:") {
			return nil, fmt.Errorf("auth: API key name %q: must be set and must not start with \"uid:\"", k.Name)
		}
		if names[k.Name] {
			return nil, fmt.Errorf("auth: two credentials named %q", k.Name)
		}
		names[k.Name] = true
		if len(strings.TrimSpace(k.Key)) < minKeyLen {
			return nil, fmt.Errorf("auth: API key %q is shorter than %d characters", k.Name, minKeyLen)
		}
		c, err := newCaller(k.Name, k.Access)
		if err != nil {
			return nil, err
		}
		c.hash = sha256.Sum256([]byte(strings.TrimSpace(k.Key)))
		if other, dup := a.keys[c.hash]; dup {
			return nil, fmt.Errorf("auth: API keys %q and %q are the same key", other.Name, k.Name)
		}
		a.keys[c.hash] = c
	}
	for _, p := range peers {
		name := "uid:" + strconv.FormatUint(uint64(p.UID), 10)
		if a.peers[p.UID] != nil {
			return nil, fmt.Errorf("auth: peer %s listed twice", name)
		}
		c, err := newCaller(name, p.Access)
		if err != nil {
			return nil, err
		}
		a.peers[p.UID] = c
	}
	return a, nil
}

func newCaller(name string, acc Access) (*Caller, error) {
	if acc.Role != RoleApplication && acc.Role != RoleOperator {
		return nil, fmt.Errorf("auth: credential %q has no role", name)
	}
	c := &Caller{Name: name, Role: acc.Role}
	if len(acc.Providers) > 0 {
		c.providers = make(map[string]bool, len(acc.Providers))
		for _, p := range acc.Providers {
			c.providers[p] = true
		}
	}
	if rl := acc.RateLimit; rl.RPS != 0 || rl.Burst != 0 {
		if rl.RPS <= 0 || math.IsInf(rl.RPS, 0) || math.IsNaN(rl.RPS) || rl.Burst < 0 {
			return nil, fmt.Errorf("auth: credential %q: rate_limit needs rps > 0 and burst >= 0", name)
		}
		burst := float64(rl.Burst)
		if burst == 0 {
			burst = max(1, math.Ceil(rl.RPS))
		}
		c.limit = rate.NewLimiter(rate.Limit(rl.RPS), int(burst))
	}
	return c, nil
}

// A Caller is an authenticated credential. Handlers find it with
// CallerFromContext.
type Caller struct {
	// Name is the API key's name or "uid:<n>".
	Name string
	Role Role

	providers map[string]bool // nil: every provider
	hash      [sha256.Size]byte
	limit     *rate.Limiter // nil: unlimited
}

// AllowsProvider reports whether the caller may act on the named
// provider's connections.
func (c *Caller) AllowsProvider(p string) bool {
	return c.providers == nil || c.providers[p]
}

// Limited reports whether the caller is limited to some providers.
func (c *Caller) Limited() bool { return c.providers != nil }

type callerKey struct{}

// CallerFromContext returns the caller of a call that passed
// authentication, or nil (health checks, calls outside the server).
func CallerFromContext(ctx context.Context) *Caller {
	c, _ := ctx.Value(callerKey{}).(*Caller)
	return c
}

// authenticate finds the caller of ctx: an API key in the authorization
// metadata if there is one (and then only it), else the peer uid of a unix
// socket connection.
func (a *Auth) authenticate(ctx context.Context) *Caller {
	if a == nil {
		return nil
	}
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch len(vals) {
	case 0:
		if p, ok := peer.FromContext(ctx); ok {
			if pi, ok := p.AuthInfo.(PeerAuthInfo); ok && pi.HasCred {
				return a.peers[pi.UID]
			}
		}
		// A JSON gateway call on the unix socket (gateway.go).
		if pi, ok := ctx.Value(gatewayPeerKey{}).(PeerAuthInfo); ok && pi.HasCred {
			return a.peers[pi.UID]
		}
		return nil
	case 1:
		key, ok := bearer(vals[0])
		if !ok {
			return nil
		}
		// Look the key up by its hash: timing can then tell at most
		// something about the hash of the presented key, not about a
		// stored one. The constant-time compare after the lookup keeps
		// the equality check itself free of early exits too.
		h := sha256.Sum256([]byte(key))
		c := a.keys[h]
		if c == nil || subtle.ConstantTimeCompare(c.hash[:], h[:]) != 1 {
			return nil
		}
		return c
	}
	return nil // several authorization values: ambiguous, refuse
}

// bearer returns the token of an "authorization: Bearer <token>" value.
func bearer(v string) (string, bool) {
	const scheme = "bearer "
	if len(v) <= len(scheme) || !strings.EqualFold(v[:len(scheme)], scheme) {
		return "", false
	}
	return strings.TrimSpace(v[len(scheme):]), true
}

// take takes a token from l at now, or says how long until one is there
// without taking it.
func take(l *rate.Limiter, now time.Time) (bool, time.Duration) {
	r := l.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// need is who may call a method.
type need uint8

const (
	needNothing     need = iota + 1 // no credential: health checks (kubelet probes)
	needAnyone                      // any valid credential: reflection
	needApplication                 // RoleApplication or RoleOperator
	needOperator                    // RoleOperator
)

// scope is how a method's provider limit is enforced.
type scope uint8

const (
	// scopeNone: the method concerns no provider.
	scopeNone scope = iota
	// scopeConnection: the request names a connection (GetConnectionId);
	// a limited caller may only name connections of its providers.
	scopeConnection
	// scopeProvider: the request names a provider (GetProvider); a
	// limited caller may only name its providers.
	scopeProvider
	// scopeHandler: the handler filters what it returns by the caller's
	// providers (CallerFromContext).
	scopeHandler
)

// auditWhen is when a method's calls are audited.
type auditWhen uint8

const (
	auditNever    auditWhen = iota
	auditOperator           // when the caller is an operator
	auditAlways
)

// rule is one method's entry in the access table.
type rule struct {
	need  need
	scope scope
	audit auditWhen
	// tokenRead counts the call in the token-read metric.
	tokenRead bool
}

// methodRules is THE access table: every method the server serves, and who
// may call it. A method that is not here is refused (PermissionDenied),
// whoever calls; TestAuth_EveryMethodHasARule keeps it complete.
// Denials (PermissionDenied) are audited whatever the method's audit
// setting; unauthenticated and rate-limited calls are counted in metrics
// and logged, not audited, so a flood of them cannot flood the audit.
var methodRules = map[string]rule{
	tvv1.TokenVaultService_GetAccessToken_FullMethodName:       {needApplication, scopeConnection, auditAlways, true},
	tvv1.TokenVaultService_StartConnect_FullMethodName:         {needApplication, scopeProvider, auditAlways, false},
	tvv1.TokenVaultService_CreateConnectSession_FullMethodName: {needApplication, scopeHandler, auditAlways, false},
	tvv1.TokenVaultService_GetConnection_FullMethodName:        {needApplication, scopeConnection, auditOperator, false},
	tvv1.TokenVaultService_ListConnections_FullMethodName:      {needApplication, scopeHandler, auditOperator, false},
	tvv1.TokenVaultService_ListProviders_FullMethodName:        {needApplication, scopeHandler, auditOperator, false},
	tvv1.TokenVaultService_WatchEvents_FullMethodName:          {needApplication, scopeHandler, auditOperator, false},
	tvv1.TokenVaultService_RevokeConnection_FullMethodName:     {needOperator, scopeConnection, auditAlways, false},
	tvv1.TokenVaultService_ValidateConnection_FullMethodName:   {needOperator, scopeConnection, auditAlways, false},
	tvv1.TokenVaultService_UpdateConnection_FullMethodName:     {needApplication, scopeConnection, auditAlways, false},
	tvv1.TokenVaultService_DeleteConnection_FullMethodName:     {needOperator, scopeConnection, auditAlways, false},
	tvv1.TokenVaultService_DeleteOwner_FullMethodName:          {needOperator, scopeHandler, auditAlways, false},
	tvv1.AdminService_ImportConnections_FullMethodName:         {needOperator, scopeHandler, auditAlways, false},
	tvv1.AdminService_ExchangeLegacyTokens_FullMethodName:      {needOperator, scopeProvider, auditAlways, false},
	tvv1.AdminService_RotateKeys_FullMethodName:                {needOperator, scopeNone, auditAlways, false},
	tvv1.AdminService_RetireKeys_FullMethodName:                {needOperator, scopeNone, auditAlways, false},
	tvv1.AdminService_RekeyMaster_FullMethodName:               {needOperator, scopeNone, auditAlways, false},
	tvv1.AdminService_ListUnreadableRecords_FullMethodName:     {needOperator, scopeNone, auditAlways, false},
	tvv1.AdminService_ListAuditEvents_FullMethodName:           {needOperator, scopeNone, auditAlways, false},

	healthpb.Health_Check_FullMethodName: {need: needNothing},
	healthpb.Health_Watch_FullMethodName: {need: needNothing},
	healthpb.Health_List_FullMethodName:  {need: needNothing},

	reflectionv1.ServerReflection_ServerReflectionInfo_FullMethodName:      {need: needAnyone},
	reflectionv1alpha.ServerReflection_ServerReflectionInfo_FullMethodName: {need: needAnyone},
}

// rulesWith returns the access table plus methods of services registered
// through Config.Register, which need the given role and are audited when
// an operator calls them.
func rulesWith(extra map[string]Role) map[string]rule {
	out := make(map[string]rule, len(methodRules)+len(extra))
	for m, r := range methodRules {
		out[m] = r
	}
	for m, role := range extra {
		if _, taken := out[m]; taken {
			continue // the table wins
		}
		n := needOperator
		if role == RoleApplication {
			n = needApplication
		}
		out[m] = rule{need: n, audit: auditOperator}
	}
	return out
}

func (r rule) allows(c *Caller) bool {
	switch r.need {
	case needNothing, needAnyone:
		return true
	case needApplication:
		return c.Role == RoleApplication || c.Role == RoleOperator
	case needOperator:
		return c.Role == RoleOperator
	}
	return false
}

func (r rule) audited(c *Caller) bool {
	return r.audit == auditAlways || (r.audit == auditOperator && c.Role == RoleOperator)
}

// accessErrors are the access check's errors. Built at the first refusal
// (not at start: building one initialises the ErrorInfo message's
// reflection, a tenth of a millisecond of the start) and shared after it: a
// flood of bad calls costs no allocation for them.
var accessErrors = sync.OnceValue(func() (e accessErrs) {
	e.unauthenticated = statusWithReason(codes.Unauthenticated, ReasonUnauthenticated,
		`missing or unknown credential: send "authorization: Bearer <API key>"`, nil)
	e.roleDenied = statusWithReason(codes.PermissionDenied, ReasonPermissionDenied,
		"the credential's role may not call this method", nil)
	e.providerDenied = statusWithReason(codes.PermissionDenied, ReasonPermissionDenied,
		"the credential may not use this provider", nil)
	e.noRule = statusWithReason(codes.PermissionDenied, ReasonPermissionDenied,
		"the method is not in the access table", nil)
	e.hiddenConnection = statusWithReason(codes.NotFound, ReasonNotConnected, "no such connection", nil)
	return e
})

type accessErrs struct {
	unauthenticated, roleDenied, providerDenied, noRule, hiddenConnection error
}

func rateLimited(wait time.Duration) error {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	return statusWithReason(codes.ResourceExhausted, ReasonRateLimited, "rate limit exceeded; retry later",
		map[string]string{"retry_after_seconds": strconv.Itoa(secs)})
}

type connectionRequest interface{ GetConnectionId() string }
type providerRequest interface{ GetProvider() string }

// gate is the access check every call passes before its handler:
// authentication, role, rate limit, provider limit; then the call, its
// audit record and its metrics.
type gate struct {
	rules   map[string]rule
	auth    *Auth
	vault   *vault.Vault
	audit   *audit.Log
	metrics *Metrics
	now     func() time.Time
}

// admit authenticates and authorizes a call of method with request req
// (nil for streams). It returns the caller (nil for methods that need
// nothing), or the error to answer.
func (g *gate) admit(ctx context.Context, method string, req any) (rule, *Caller, error) {
	r, ok := g.rules[method]
	if !ok {
		g.metrics.authFailure(failDenied)
		return r, nil, accessErrors().noRule
	}
	if r.need == needNothing {
		return r, nil, nil
	}
	c := g.auth.authenticate(ctx)
	if c == nil {
		g.metrics.authFailure(failUnauthenticated)
		return r, nil, accessErrors().unauthenticated
	}
	if !r.allows(c) {
		g.metrics.authFailure(failDenied)
		// The record names the connection the caller tried to act on
		// (an application revoking, say), once the request is known to
		// be within bounds.
		var connID string
		if cr, ok := req.(connectionRequest); ok && validateOurs(req) == nil {
			connID = cr.GetConnectionId()
		}
		g.record(c, method, connID, "", accessErrors().roleDenied)
		return r, nil, accessErrors().roleDenied
	}
	if c.limit != nil {
		if ok, wait := take(c.limit, g.now()); !ok {
			g.metrics.authFailure(failRateLimited)
			return r, nil, rateLimited(wait)
		}
	}
	return r, c, nil
}

func (g *gate) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	r, c, err := g.admit(ctx, info.FullMethod, req)
	if err != nil {
		return nil, err
	}
	if c == nil {
		return handler(ctx, req)
	}
	if err := validateOurs(req); err != nil {
		return nil, err // before the provider limit and the audit: nothing of it is kept
	}
	var connID, provider string
	var note *callNote
	switch r.scope {
	case scopeConnection:
		if sr, ok := req.(selectable); ok && sr.GetConnectionId() == "" && sr.GetSelector() != nil {
			// The handler resolves the selector (selector.go); the
			// provider it names is the only one it can resolve to.
			if !c.AllowsProvider(sr.GetSelector().GetProvider()) {
				g.metrics.authFailure(failDenied)
				g.finish(r, c, info.FullMethod, "", "", accessErrors().hiddenConnection)
				return nil, accessErrors().hiddenConnection
			}
			note = &callNote{}
			ctx = context.WithValue(ctx, callNoteKey{}, note)
		} else if cr, ok := req.(connectionRequest); ok {
			connID = cr.GetConnectionId()
			if p, found := g.providerOf(connID); found {
				provider = p
				if !c.AllowsProvider(p) {
					// NOT_FOUND, as for an unknown id: a limited
					// credential learns nothing of other providers'
					// connections, not even that they exist.
					g.metrics.authFailure(failDenied)
					g.finish(r, c, info.FullMethod, connID, provider, accessErrors().hiddenConnection)
					return nil, accessErrors().hiddenConnection
				}
			} else if c.Limited() && g.vault != nil && g.vault.IsUnreadable(connID) {
				// A quarantined record's provider cannot be read: only
				// a credential limited to no provider may see or delete it.
				g.metrics.authFailure(failDenied)
				g.finish(r, c, info.FullMethod, connID, "", accessErrors().hiddenConnection)
				return nil, accessErrors().hiddenConnection
			}
		}
	case scopeProvider:
		if pr, ok := req.(providerRequest); ok {
			provider = pr.GetProvider()
			if !c.AllowsProvider(provider) {
				g.metrics.authFailure(failDenied)
				g.record(c, info.FullMethod, "", provider, accessErrors().providerDenied)
				return nil, accessErrors().providerDenied
			}
		}
	}
	resp, err := handler(context.WithValue(ctx, callerKey{}, c), req)
	if note != nil && note.connID != "" {
		connID = note.connID
		provider, _ = g.providerOf(connID)
	}
	g.finish(r, c, info.FullMethod, connID, provider, err)
	return resp, err
}

// callNote is what a handler tells the gate about its call: the connection
// a selector resolved to, for the audit record and the token-read metric.
// The gate puts one in the context only of calls that need it.
type callNote struct{ connID string }

type callNoteKey struct{}

// noteConnection tells the gate that the call concerns connection id.
func noteConnection(ctx context.Context, id string) {
	if n, ok := ctx.Value(callNoteKey{}).(*callNote); ok {
		n.connID = id
	}
}

func (g *gate) providerOf(id string) (string, bool) {
	if g.vault == nil {
		return "", false
	}
	return g.vault.ProviderOf(id)
}

// finish records a call that was admitted.
func (g *gate) finish(r rule, c *Caller, method, connID, provider string, err error) {
	if r.tokenRead {
		g.metrics.tokenRead(provider, errCode(err))
	}
	if r.audited(c) {
		g.record(c, method, connID, provider, err)
	}
}

// record queues an audit record; it does not wait for the write.
func (g *gate) record(c *Caller, method, connID, provider string, err error) {
	if g.audit == nil {
		return
	}
	rec := audit.Record{
		Caller: c.Name, Role: c.Role.String(), Method: method,
		ConnectionID: connID, Provider: provider, Outcome: codeNames[errCode(err)],
	}
	if err != nil {
		rec.Reason = errorReason(err)
	}
	g.audit.Record(rec)
}

func (g *gate) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	r, c, err := g.admit(ss.Context(), info.FullMethod, nil)
	if err != nil {
		return err
	}
	if c == nil {
		return handler(srv, ss)
	}
	err = handler(srv, &callerStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, c)})
	if r.audited(c) {
		g.record(c, info.FullMethod, "", "", err)
	}
	return err
}

// callerStream carries the caller in the stream's context and checks
// each request it receives against the validation table.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *callerStream) Context() context.Context { return s.ctx }

func (s *callerStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return validateOurs(m)
}

// validateOurs applies the validation table (validate.go) to the requests
// of tokenvault's services; others (reflection, services added by
// Config.Register) are their own business.
func validateOurs(req any) error {
	m, ok := req.(proto.Message)
	if !ok || m.ProtoReflect().Descriptor().ParentFile().Package() != tvv1.File_tokenvault_v1_tokenvault_proto.Package() {
		return nil
	}
	return validateRequest(m)
}

// errCode is the gRPC code of a handler's error.
func errCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	c := statusCode(err)
	if int(c) >= len(codeNames) {
		return codes.Unknown
	}
	return c
}

// codeNames are the canonical names of the gRPC codes, as audit outcomes
// and metric labels (codes.Code.String says "NotFound", not "NOT_FOUND").
var codeNames = [...]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}
