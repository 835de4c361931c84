package vault

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Connect sessions: what one link to the connect page may do, for whom.
// The application creates one for its signed-in user; the link carries a
// random token, of which the store keeps only the SHA-256 (so neither a
// copy of the store nor a backup opens the page), sealed like every record.

const (
	// MaxSessionTTL bounds a connect session's life.
	MaxSessionTTL = time.Hour
	// DefaultSessionTTL is a session's life when the request names none.
	DefaultSessionTTL = 30 * time.Minute
)

// SessionRequest creates a connect session.
type SessionRequest struct {
	Owner, Tenant string
	// Providers the page offers; empty: every configured provider.
	Providers []string
	// ReturnTo is where the page's "back" link and full-page flows go;
	// checked against the return_to allowlist.
	ReturnTo        string
	AllowDisconnect bool
	// TTL is the session's life, up to MaxSessionTTL; 0: DefaultSessionTTL.
	TTL time.Duration
	// AppMetadata is set on the connections the session's flows create
	// (bounded by CheckAppMetadata).
	AppMetadata map[string]string
	// CreatedBy names the credential that created the session.
	CreatedBy string
}

// A ConnectSession is a stored connect session.
type ConnectSession struct {
	// ID identifies the session without being its token: the first 16
	// hex digits of the token's hash.
	ID              string            `json:"-"`
	Owner           string            `json:"owner"`
	Tenant          string            `json:"tenant,omitempty"`
	Providers       []string          `json:"providers,omitempty"`
	ReturnTo        string            `json:"return_to,omitempty"`
	AllowDisconnect bool              `json:"allow_disconnect,omitempty"`
	AppMetadata     map[string]string `json:"app,omitempty"`
	CreatedBy       string            `json:"by,omitempty"`
	Created         time.Time         `json:"created"`
	Expires         time.Time         `json:"expires"`
}

func sessionKey(token string) (key, id string) {
	sum := sha256.Sum256([]byte(token))
	h := hex.EncodeToString(sum[:])
	return sessionPrefix + h, "cs_" + h[:16]
}

// CreateSession stores a new connect session and returns its token, which
// the vault does not keep.
func (v *Vault) CreateSession(ctx context.Context, r SessionRequest) (string, *ConnectSession, error) {
	if r.Owner == "" {
		return "", nil, fmt.Errorf("%w: owner is required", ErrInvalidArgument)
	}
	switch {
	case r.TTL < 0 || r.TTL > MaxSessionTTL:
		return "", nil, fmt.Errorf("%w: ttl must be from 0 to %v", ErrInvalidArgument, MaxSessionTTL)
	case r.TTL == 0:
		r.TTL = DefaultSessionTTL
	}
	if err := CheckAppMetadata(r.AppMetadata); err != nil {
		return "", nil, err
	}
	for _, p := range r.Providers {
		if _, err := v.provider(p); err != nil {
			return "", nil, err
		}
	}
	if r.ReturnTo == "" {
		r.ReturnTo = v.cfg.DefaultReturnTo
	} else if !v.returnToAllowed(r.ReturnTo) {
		return "", nil, ErrReturnToNotAllowed
	}
	now := v.now()
	s := &ConnectSession{
		Owner: r.Owner, Tenant: r.Tenant, Providers: slices.Clone(r.Providers), ReturnTo: r.ReturnTo,
		AllowDisconnect: r.AllowDisconnect, AppMetadata: cloneMap(r.AppMetadata), CreatedBy: r.CreatedBy,
		Created: now, Expires: now.Add(r.TTL),
	}
	// 256 bits from crypto/rand, base32: 52 characters, URL-safe.
	token := rand.Text() + rand.Text()
	key, id := sessionKey(token)
	plain, err := json.Marshal(s)
	if err != nil {
		return "", nil, err
	}
	sealed, err := v.kr.Seal(key, plain)
	if err != nil {
		return "", nil, err
	}
	if _, err := v.store.Apply(ctx, Op{Key: key, Value: sealed, IfRev: 0}); err != nil {
		return "", nil, fmt.Errorf("vault: store connect session: %w", err)
	}
	s.ID = id
	return token, s, nil
}

// Session returns the unexpired session whose token is token, or
// ErrSessionInvalid. It looks the session up by the token's hash: the
// store holds nothing to compare a guess against.
func (v *Vault) Session(ctx context.Context, token string) (*ConnectSession, error) {
	if token == "" || len(token) > 256 {
		return nil, ErrSessionInvalid
	}
	key, id := sessionKey(token)
	sealed, _, err := v.store.Get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		return nil, ErrSessionInvalid
	}
	if err != nil {
		return nil, fmt.Errorf("vault: read connect session: %w", err)
	}
	plain, err := v.kr.Open(key, sealed)
	if err != nil {
		return nil, ErrSessionInvalid
	}
	var s ConnectSession
	if err := json.Unmarshal(plain, &s); err != nil || !v.now().Before(s.Expires) {
		return nil, ErrSessionInvalid
	}
	s.ID = id
	return &s, nil
}
