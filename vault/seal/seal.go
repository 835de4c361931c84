// Package seal holds tokenvault's keyring: the master key, the data keys it
// seals, and the envelope every secret is stored in (AES-256-GCM bound to the
// record's storage key). It is a leaf: it knows no records, no connections and
// no storage engine; a Keyring keeps its own two records through the small
// Store it declares, which package vault adapts its store to.
package seal

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// A sealed value is
//
//	[1 byte format version][4 bytes big-endian key term][12 bytes nonce][ciphertext][16 bytes GCM tag]
//
// and the GCM additional data is the 17-byte header followed by the storage
// key of the record the value is written under. So a flipped header byte
// fails to open, and so does a value copied or moved to another record.
const (
	sealVersion   = 1
	sealNonceLen  = 12
	sealHeaderLen = 1 + 4 + sealNonceLen
	sealTagLen    = 16
	sealOverhead  = sealHeaderLen + sealTagLen
)

// The keyring's own records in the Store.
const (
	// KeyringKey holds the data keys, sealed by the master key.
	KeyringKey = "meta/keyring"
	// SchemaKey holds the store layout version, written with the keyring.
	SchemaKey = "meta/schema"
	// HighWaterKey holds the keyring's generation, sealed under its newest
	// data-key term and written with every change of the keyring, so that a
	// keyring put back to an older copy is refused (ErrRolledBack).
	HighWaterKey = "meta/keyring-hwm"
	// storeSchema is the newest store layout this code reads and writes.
	storeSchema = 1
	// masterTerm is the term in the header of the keyring record, which is
	// sealed by the master key. Data key terms start at 1.
	masterTerm = 0
	// rotateAttempts bounds Rotate's compare-and-swap retries.
	rotateAttempts = 5
)

var (
	// ErrWrongMasterKey is returned by OpenKeyring when the master key does
	// not open the stored keyring (or the keyring record is damaged: the two
	// cannot be told apart). Nothing is written to the store.
	ErrWrongMasterKey = errors.New("seal: master key does not open the keyring")

	// ErrBroken is returned by Keyring.Open for a value that does not
	// authenticate: tampered with, truncated, sealed under another key or
	// key term, or moved to another record.
	ErrBroken = errors.New("seal: sealed value does not open")

	// ErrSchemaVersion is returned by OpenKeyring when the store was written
	// by a newer version of tokenvault than this one.
	ErrSchemaVersion = errors.New("seal: unsupported store schema version")

	// ErrConflict is what a Store's Put wraps when a compare fails.
	ErrConflict = errors.New("seal: conflicting write")

	// ErrRolledBack is returned by OpenKeyring and Reload for a keyring
	// older than its high-water mark: the keyring record was put back to an
	// older copy (a partial restore, a tampered store). Values sealed under
	// the terms it lost would not open. Nothing is written.
	ErrRolledBack = errors.New("seal: the keyring was rolled back to an older copy")
)

var (
	errSealShort   = fmt.Errorf("%w: too short", ErrBroken)
	errSealVersion = fmt.Errorf("%w: unknown format version", ErrBroken)
	errSealAuth    = fmt.Errorf("%w: authentication failed", ErrBroken)
	errSealTerm    = fmt.Errorf("%w: unknown key term", ErrBroken)
	errNoKeyring   = errors.New("seal: Keyring not opened (use OpenKeyring)")
	errMasterKey   = errors.New("seal: master key must be 32 raw bytes, or 32 bytes as base64 or hex text")
)

// A Store keeps a Keyring's two records, KeyringKey and SchemaKey. Package
// vault adapts its own Store to it; declaring it here keeps this package a
// leaf. A Store is safe for concurrent use.
type Store interface {
	// Get returns a copy of the value under key and its revision; an absent
	// key gives a nil value, revision 0 and a nil error.
	Get(ctx context.Context, key string) (value []byte, rev uint64, err error)

	// Put writes recs in one atomic, durable step, each only if its key's
	// revision is still IfRev (0: the key must be absent). If any compare
	// fails it writes nothing and returns an error wrapping ErrConflict. It
	// returns the new revision of each record, in order.
	Put(ctx context.Context, recs ...Record) ([]uint64, error)
}

// A Record is one write of Store.Put.
type Record struct {
	Key   string
	Value []byte
	IfRev uint64
}

// MasterKey is the 32-byte key-encryption key that seals the keyring.
//
// A MasterKey never prints: String, Format (every fmt verb), LogValue (slog)
// and MarshalText all give "MasterKey(redacted)". Use Encode to write one out
// on purpose.
type MasterKey [32]byte

const masterKeyRedacted = "MasterKey(redacted)"

// ParseMasterKey reads a master key from the contents of a key file or an
// environment variable. It accepts exactly 32 raw bytes, or text (surrounding
// whitespace ignored) holding 32 bytes as hex or as base64 in the standard or
// URL alphabet, padded or not. The error never includes the input.
//
// It refuses an all-zero key, and 32 "raw" bytes that are all printable
// ASCII: that is a 32-character password or a 16-byte key in hex, not 256
// random bits (a random key is all printable with odds of about 1e-14).
func ParseMasterKey(b []byte) (MasterKey, error) {
	var mk MasterKey
	switch {
	case len(b) == len(mk) && isPrintableASCII(b):
		return MasterKey{}, errors.New("seal: master key is 32 characters of text, not 32 random bytes; give 32 bytes as base64 or hex")
	case len(b) == len(mk):
		copy(mk[:], b)
	case !parseMasterKeyText(&mk, bytes.TrimSpace(b)):
		return MasterKey{}, errMasterKey
	}
	if mk == (MasterKey{}) {
		return MasterKey{}, errors.New("seal: master key is all zeros")
	}
	return mk, nil
}

// parseMasterKeyText decodes s as hex or base64 into mk and reports whether
// it held exactly 32 bytes.
func parseMasterKeyText(mk *MasterKey, s []byte) bool {
	// Hex (64 characters) is the longest accepted form; the bound also keeps
	// every decode below inside buf.
	if len(s) > 2*len(mk) {
		return false
	}
	var buf [64]byte
	defer clear(buf[:])
	if len(s) == 2*len(mk) {
		if n, err := hex.Decode(buf[:], s); err == nil && n == len(mk) {
			copy(mk[:], buf[:n])
			return true
		}
	}
	for _, enc := range []*base64.Encoding{
		base64.StdEncoding, base64.RawStdEncoding,
		base64.URLEncoding, base64.RawURLEncoding,
	} {
		if n, err := enc.Decode(buf[:], s); err == nil && n == len(mk) {
			copy(mk[:], buf[:n])
			return true
		}
	}
	return false
}

func isPrintableASCII(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// GenerateMasterKey returns a new random master key from crypto/rand.
func GenerateMasterKey() (MasterKey, error) {
	var mk MasterKey
	if _, err := rand.Read(mk[:]); err != nil {
		return MasterKey{}, fmt.Errorf("seal: generate master key: %w", err)
	}
	return mk, nil
}

// String returns "MasterKey(redacted)".
func (m MasterKey) String() string { return masterKeyRedacted }

// Format writes "MasterKey(redacted)" for every verb, so that neither %x nor
// %d nor %#v prints the key.
func (m MasterKey) Format(f fmt.State, verb rune) { io.WriteString(f, masterKeyRedacted) }

// LogValue returns "MasterKey(redacted)", so slog never logs the key.
func (m MasterKey) LogValue() slog.Value { return slog.StringValue(masterKeyRedacted) }

// MarshalText returns "MasterKey(redacted)", so encoding/json and friends
// never write the key. Use Encode to write it out.
func (m MasterKey) MarshalText() ([]byte, error) { return []byte(masterKeyRedacted), nil }

// ID returns a short fingerprint of the key that does not reveal it (an
// HMAC-SHA256 of a fixed label under the key, 8 bytes in hex), to tell keys
// apart in logs and errors.
func (m MasterKey) ID() string {
	h := hmac.New(sha256.New, m[:])
	h.Write([]byte("tokenvault master key id"))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Encode returns the key as standard padded base64, the form to write into a
// generated key file. ParseMasterKey reads it back.
func (m MasterKey) Encode() string { return base64.StdEncoding.EncodeToString(m[:]) }

// A Keyring seals and opens record values with AES-256-GCM under data keys
// identified by a term. Seal uses the newest term; Open accepts every term
// the keyring holds, so values sealed before a Rotate keep opening. The data
// keys are stored in the Store under "meta/keyring", sealed by the master
// key.
//
// A Keyring is safe for concurrent use. The zero Keyring is not usable; get
// one from OpenKeyring.
type Keyring struct {
	store  Store
	master cipher.AEAD // seals the keyring record; term 0

	mu   sync.Mutex // serializes Rotate, Retire, Rekey and Reload; guards master
	ring atomic.Pointer[ringState]
}

// ringState is one version of the keyring. It is never modified once
// published: Seal and Open read it without locks and Rotate or Reload
// replace it whole.
type ringState struct {
	rev     uint64 // store revision of meta/keyring
	current uint32 // newest term; Seal uses it
	sealer  cipher.AEAD
	aeads   map[uint32]cipher.AEAD
	terms   []ringTerm // sorted by Term, as persisted
	gen     uint64     // the keyring's generation: one more on every change
	hwmRev  uint64     // store revision of meta/keyring-hwm
}

// ringFile is the JSON form of the keyring, sealed under meta/keyring.
// Generation increases by one with every write (0: written before it
// existed).
type ringFile struct {
	Generation uint64     `json:"generation,omitempty"`
	Terms      []ringTerm `json:"terms"`
}

// highWater is the JSON form of meta/keyring-hwm.
type highWater struct {
	Generation uint64 `json:"generation"`
}

type ringTerm struct {
	Term    uint32    `json:"term"`
	Key     []byte    `json:"key"` // encoding/json writes []byte as std base64
	Created time.Time `json:"created"`
}

// OpenKeyring loads the keyring stored under "meta/keyring" in st, sealed by
// mk.
//
// If the store holds no keyring, OpenKeyring creates one with term 1 (a fresh
// random AES-256 data key) and writes it together with "meta/schema" = "1",
// both with create-only compares, so of several processes initializing one
// store concurrently one wins and the others load its keyring. A store that
// has a "meta/schema" but no keyring is refused rather than given a new
// keyring that could not open its records.
//
// If a keyring exists but mk does not open it, OpenKeyring returns an error
// wrapping ErrWrongMasterKey and writes nothing. If "meta/schema" names a
// version newer than this code knows (or is not a version), it returns an
// error wrapping ErrSchemaVersion and writes nothing.
//
// The Keyring keeps st for Rotate and Reload.
func OpenKeyring(ctx context.Context, st Store, mk MasterKey) (*Keyring, error) {
	if st == nil {
		return nil, errors.New("seal: OpenKeyring needs a Store")
	}
	master, err := newAEAD(mk[:])
	if err != nil {
		return nil, err
	}
	k := &Keyring{store: st, master: master}
	for attempt := 0; ; attempt++ {
		schemaRev, err := checkSchema(ctx, st)
		if err != nil {
			return nil, err
		}
		rs, err := k.load(ctx)
		if err == nil {
			k.ring.Store(rs)
			return k, nil
		}
		if errors.Is(err, ErrWrongMasterKey) {
			return nil, fmt.Errorf("%w (the given key has id %s; if the keyring was rekeyed, give the new master key)", err, mk.ID())
		}
		if err != errNoRing {
			return nil, err
		}
		if schemaRev != 0 {
			return nil, errors.New("seal: store has a schema version but no keyring; refusing to create a new keyring for existing data")
		}
		err = k.create(ctx)
		if err == nil {
			return k, nil
		}
		// ErrConflict: another process created the keyring first; load it.
		if !errors.Is(err, ErrConflict) || attempt == 2 {
			return nil, fmt.Errorf("seal: create keyring: %w", err)
		}
	}
}

// checkSchema returns the revision of meta/schema (0 if absent) after
// checking that this code understands the version it names.
func checkSchema(ctx context.Context, st Store) (uint64, error) {
	v, rev, err := st.Get(ctx, SchemaKey)
	if err != nil {
		return 0, fmt.Errorf("seal: read %s: %w", SchemaKey, err)
	}
	if rev == 0 {
		return 0, nil
	}
	n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("%w: %s does not hold a version number", ErrSchemaVersion, SchemaKey)
	}
	if n > storeSchema {
		return 0, fmt.Errorf("%w: the store has schema %d, this build knows up to %d", ErrSchemaVersion, n, storeSchema)
	}
	return rev, nil
}

// errNoRing is load's answer for a store that holds no keyring.
var errNoRing = errors.New("seal: the store holds no keyring")

// load reads and opens the keyring record and checks it against its
// high-water mark. It returns errNoRing if there is none.
//
// The two are written in one step but read in two: a change by another
// process between the reads shows a mark newer than the keyring read just
// before. So a mismatch is read again, and only one that stays is a
// rollback.
func (k *Keyring) load(ctx context.Context) (*ringState, error) {
	for attempt := 1; ; attempt++ {
		rs, err := k.loadOnce(ctx)
		if !errors.Is(err, ErrRolledBack) || attempt == 3 {
			return rs, err
		}
	}
}

func (k *Keyring) loadOnce(ctx context.Context) (*ringState, error) {
	sealed, rev, err := k.store.Get(ctx, KeyringKey)
	if err != nil {
		return nil, fmt.Errorf("seal: read %s: %w", KeyringKey, err)
	}
	if rev == 0 {
		return nil, errNoRing
	}
	if term, err := TermOf(sealed); err != nil || term != masterTerm {
		return nil, fmt.Errorf("%w (the keyring record's header is damaged)", ErrWrongMasterKey)
	}
	plain, err := openEnvelope(k.master, KeyringKey, sealed)
	if err != nil {
		return nil, ErrWrongMasterKey
	}
	defer clear(plain)
	var f ringFile
	// The json error is dropped: it can quote bytes of the input.
	if err := json.Unmarshal(plain, &f); err != nil {
		return nil, errors.New("seal: the keyring record is malformed")
	}
	rs, err := newRingState(f.Terms, rev)
	if err != nil {
		return nil, err
	}
	rs.gen = f.Generation
	if err := k.checkHighWater(ctx, rs); err != nil {
		return nil, err
	}
	return rs, nil
}

// checkHighWater compares rs, just read, with the high-water mark, and
// sets rs.hwmRev. A keyring from before high-water marks (generation 0)
// without one passes; so does one that is what the mark says.
func (k *Keyring) checkHighWater(ctx context.Context, rs *ringState) error {
	sealed, rev, err := k.store.Get(ctx, HighWaterKey)
	if err != nil {
		return fmt.Errorf("seal: read %s: %w", HighWaterKey, err)
	}
	const restore = "restore the newest keyring (or the whole store) from a backup; do not write to the store meanwhile"
	if rev == 0 {
		if rs.gen > 0 {
			return fmt.Errorf("%w: the keyring has generation %d but its high-water mark %s is missing; %s", ErrRolledBack, rs.gen, HighWaterKey, restore)
		}
		return nil
	}
	term, err := TermOf(sealed)
	if err != nil {
		return fmt.Errorf("%w: the keyring's high-water mark %s is damaged; %s", ErrRolledBack, HighWaterKey, restore)
	}
	aead := rs.aeads[term]
	if aead == nil {
		return fmt.Errorf("%w: the high-water mark was sealed under key term %d, which the keyring (newest term %d, generation %d) does not hold: a newer keyring existed; %s",
			ErrRolledBack, term, rs.current, rs.gen, restore)
	}
	plain, err := openEnvelope(aead, HighWaterKey, sealed)
	if err != nil {
		return fmt.Errorf("%w: the keyring's high-water mark %s does not open; %s", ErrRolledBack, HighWaterKey, restore)
	}
	var hw highWater
	err = json.Unmarshal(plain, &hw)
	clear(plain)
	if err != nil {
		return fmt.Errorf("%w: the keyring's high-water mark %s is malformed; %s", ErrRolledBack, HighWaterKey, restore)
	}
	if hw.Generation != rs.gen {
		return fmt.Errorf("%w: the keyring has generation %d, its high-water mark says %d; %s", ErrRolledBack, rs.gen, hw.Generation, restore)
	}
	rs.hwmRev = rev
	return nil
}

// write stores next, the keyring that follows cur, with the next
// generation and its high-water mark, each with a compare on cur's
// revisions, and extra records in the same step. It sets next's revisions
// and generation; the caller publishes it.
func (k *Keyring) write(ctx context.Context, cur, next *ringState, extra ...Record) error {
	next.gen = cur.gen + 1
	sealed, err := k.sealRing(next)
	if err != nil {
		return err
	}
	hw, err := json.Marshal(highWater{Generation: next.gen})
	if err != nil {
		return fmt.Errorf("seal: encode high-water mark: %w", err)
	}
	recs := append([]Record{
		{Key: KeyringKey, Value: sealed, IfRev: cur.rev},
		{Key: HighWaterKey, Value: sealEnvelope(next.sealer, next.current, HighWaterKey, hw), IfRev: cur.hwmRev},
	}, extra...)
	revs, err := k.store.Put(ctx, recs...)
	if err != nil {
		return err
	}
	next.rev, next.hwmRev = revs[0], revs[1]
	return nil
}

// create writes a new keyring with term 1, and the schema version, to an
// empty store. It returns an error wrapping ErrConflict if either exists.
func (k *Keyring) create(ctx context.Context) error {
	t, err := newRingTerm(1)
	if err != nil {
		return err
	}
	rs, err := newRingState([]ringTerm{t}, 0)
	if err != nil {
		return err
	}
	err = k.write(ctx, &ringState{}, rs, Record{Key: SchemaKey, Value: []byte(strconv.Itoa(storeSchema)), IfRev: 0})
	if err != nil {
		return err
	}
	k.ring.Store(rs)
	return nil
}

// sealRing encodes rs's terms and generation and seals them under the
// master key.
func (k *Keyring) sealRing(rs *ringState) ([]byte, error) {
	plain, err := json.Marshal(ringFile{Generation: rs.gen, Terms: rs.terms})
	if err != nil {
		return nil, fmt.Errorf("seal: encode keyring: %w", err)
	}
	defer clear(plain)
	return sealEnvelope(k.master, masterTerm, KeyringKey, plain), nil
}

func newRingTerm(term uint32) (ringTerm, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return ringTerm{}, fmt.Errorf("seal: generate data key: %w", err)
	}
	return ringTerm{Term: term, Key: key, Created: time.Now().UTC().Truncate(time.Second)}, nil
}

// newRingState checks the decoded terms and builds an AEAD for each.
func newRingState(terms []ringTerm, rev uint64) (*ringState, error) {
	if len(terms) == 0 {
		return nil, errors.New("seal: the keyring holds no keys")
	}
	terms = slices.Clone(terms)
	slices.SortFunc(terms, func(a, b ringTerm) int { return cmpUint32(a.Term, b.Term) })
	rs := &ringState{rev: rev, terms: terms, aeads: make(map[uint32]cipher.AEAD, len(terms))}
	for _, t := range terms {
		if t.Term == masterTerm {
			return nil, errors.New("seal: the keyring holds a key with the reserved term 0")
		}
		if _, dup := rs.aeads[t.Term]; dup {
			return nil, fmt.Errorf("seal: the keyring holds term %d twice", t.Term)
		}
		aead, err := newAEAD(t.Key)
		if err != nil {
			return nil, fmt.Errorf("seal: the keyring's term %d: %w", t.Term, err)
		}
		rs.aeads[t.Term] = aead
	}
	rs.current = terms[len(terms)-1].Term
	rs.sealer = rs.aeads[rs.current]
	return rs, nil
}

// with returns a copy of rs with t added as the newest term, reusing the
// AEADs rs already built.
func (rs *ringState) with(t ringTerm) (*ringState, error) {
	aead, err := newAEAD(t.Key)
	if err != nil {
		return nil, err
	}
	next := &ringState{
		current: t.Term,
		sealer:  aead,
		aeads:   make(map[uint32]cipher.AEAD, len(rs.aeads)+1),
		terms:   append(slices.Clip(rs.terms), t),
	}
	for term, a := range rs.aeads {
		next.aeads[term] = a
	}
	next.aeads[t.Term] = aead
	return next, nil
}

func newAEAD(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, errors.New("seal: a key must be 32 bytes")
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return aead, nil
}

func cmpUint32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Term returns the current (newest) key term, the one Seal uses.
func (k *Keyring) Term() uint32 {
	rs := k.ring.Load()
	if rs == nil {
		return 0
	}
	return rs.current
}

// Seal encrypts plaintext for storage under key, with the current term's data
// key and a fresh random nonce. The result opens only with Open(key, ...):
// the storage key is bound into the seal. Seal does not retain plaintext; the
// returned slice is newly allocated and owned by the caller. The value grows
// by 33 bytes.
func (k *Keyring) Seal(key string, plaintext []byte) ([]byte, error) {
	rs := k.ring.Load()
	if rs == nil {
		return nil, errNoKeyring
	}
	return sealEnvelope(rs.sealer, rs.current, key, plaintext), nil
}

// Open authenticates and decrypts a value Seal returned for the same key. It
// returns an error wrapping ErrBroken if the value was tampered with,
// truncated, sealed for another key (moved between records), sealed by
// another keyring, or names a term this keyring does not hold (a Rotate in
// another process: call Reload). The returned plaintext is newly allocated;
// sealed is not retained.
func (k *Keyring) Open(key string, sealed []byte) ([]byte, error) {
	aead, err := k.aeadFor(sealed)
	if err != nil {
		return nil, err
	}
	return openEnvelope(aead, key, sealed)
}

// OpenAppend is Open that appends the plaintext to dst instead of
// allocating it, for loops that open many values into one buffer. On error
// dst is returned unchanged.
func (k *Keyring) OpenAppend(dst []byte, key string, sealed []byte) ([]byte, error) {
	aead, err := k.aeadFor(sealed)
	if err != nil {
		return dst, err
	}
	var scratch [128]byte
	ad := append(append(scratch[:0], sealed[:sealHeaderLen]...), key...)
	out, err := aead.Open(dst, sealed[5:sealHeaderLen], sealed[sealHeaderLen:], ad)
	if err != nil {
		return dst, errSealAuth
	}
	return out, nil
}

// aeadFor returns the AEAD of the term sealed names.
func (k *Keyring) aeadFor(sealed []byte) (cipher.AEAD, error) {
	rs := k.ring.Load()
	if rs == nil {
		return nil, errNoKeyring
	}
	term, err := TermOf(sealed)
	if err != nil {
		return nil, err
	}
	aead := rs.aeads[term]
	if aead == nil {
		return nil, fmt.Errorf("%w %d", errSealTerm, term)
	}
	return aead, nil
}

// Why a sealed value does not open, as BrokenReason names it. None of them
// tells what the value held.
const (
	// BrokenFraming: too short, or an unknown format version.
	BrokenFraming = "bad_framing"
	// BrokenUnknownTerm: sealed under a key term the keyring does not hold.
	BrokenUnknownTerm = "unknown_key_term"
	// BrokenAuth: the tag does not verify: the value was changed, sealed
	// by another keyring, or moved from another record (the storage key is
	// bound into the seal).
	BrokenAuth = "authentication_failed"
)

// BrokenReason returns which of BrokenFraming, BrokenUnknownTerm or
// BrokenAuth err (from Open or OpenAppend) is, or "" if it is none.
func BrokenReason(err error) string {
	switch {
	case errors.Is(err, errSealShort), errors.Is(err, errSealVersion):
		return BrokenFraming
	case errors.Is(err, errSealTerm):
		return BrokenUnknownTerm
	case errors.Is(err, errSealAuth):
		return BrokenAuth
	}
	return ""
}

// TermOf returns the key term in the header of a sealed value without
// opening it. It returns an error wrapping ErrBroken if sealed is too
// short to be a sealed value or has an unknown format version.
func TermOf(sealed []byte) (uint32, error) {
	if len(sealed) < sealOverhead {
		return 0, errSealShort
	}
	if sealed[0] != sealVersion {
		return 0, errSealVersion
	}
	return binary.BigEndian.Uint32(sealed[1:5]), nil
}

// sealEnvelope seals plaintext under aead with one allocation: the
// additional data (header || key) is built in spare room past the end of the
// output, where GCM's writes never reach, and clipped off the result.
func sealEnvelope(aead cipher.AEAD, term uint32, key string, plaintext []byte) []byte {
	n := sealOverhead + len(plaintext)
	buf := make([]byte, n+sealHeaderLen+len(key))
	hdr := buf[:sealHeaderLen]
	hdr[0] = sealVersion
	binary.BigEndian.PutUint32(hdr[1:5], term)
	rand.Read(hdr[5:]) // never fails (crypto/rand since Go 1.24)
	ad := buf[n:]
	copy(ad, hdr)
	copy(ad[sealHeaderLen:], key)
	out := aead.Seal(hdr, hdr[5:], plaintext, ad)
	return out[:n:n]
}

// openEnvelope opens sealed, whose header TermOf has checked, with one
// allocation laid out as in sealEnvelope.
func openEnvelope(aead cipher.AEAD, key string, sealed []byte) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, errSealShort
	}
	n := len(sealed) - sealOverhead
	buf := make([]byte, n+sealHeaderLen+len(key))
	ad := buf[n:]
	copy(ad, sealed[:sealHeaderLen])
	copy(ad[sealHeaderLen:], key)
	plain, err := aead.Open(buf[:0], sealed[5:sealHeaderLen], sealed[sealHeaderLen:], ad)
	if err != nil {
		return nil, errSealAuth
	}
	return plain[:n:n], nil
}

// Rotate adds a term with a fresh random data key and makes it current: new
// Seals use it, values sealed under older terms still Open. The keyring is
// written with a compare-and-swap on its revision; if another process
// rotated first, Rotate reloads the keyring and adds a term on top of that
// one (a few times, then it gives up with an error wrapping ErrConflict).
// Rotate does not re-seal existing values: vault.Rewrap does that.
// It returns the new term.
func (k *Keyring) Rotate(ctx context.Context) (uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for attempt := 1; ; attempt++ {
		cur := k.ring.Load()
		if cur == nil {
			return 0, errNoKeyring
		}
		if cur.current == math.MaxUint32 {
			return 0, errors.New("seal: rotate keyring: out of key terms")
		}
		t, err := newRingTerm(cur.current + 1)
		if err != nil {
			return 0, err
		}
		next, err := cur.with(t)
		if err != nil {
			return 0, err
		}
		err = k.write(ctx, cur, next)
		if err == nil {
			k.ring.Store(next)
			return next.current, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == rotateAttempts {
			return 0, fmt.Errorf("seal: rotate keyring: %w", err)
		}
		if err := k.reloadLocked(ctx); err != nil {
			return 0, err
		}
	}
}

// Reload re-reads the keyring from the store, to pick up a Rotate made by
// another process sharing it. If the master key no longer opens the stored
// keyring it returns an error wrapping ErrWrongMasterKey and keeps the keys
// it had.
func (k *Keyring) Reload(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reloadLocked(ctx)
}

func (k *Keyring) reloadLocked(ctx context.Context) error {
	if k.ring.Load() == nil {
		return errNoKeyring
	}
	rs, err := k.load(ctx)
	if err != nil {
		return fmt.Errorf("seal: reload keyring: %w", err)
	}
	cur := k.ring.Load()
	if rs.gen < cur.gen {
		return fmt.Errorf("seal: reload keyring: %w: generation %d, this process had %d", ErrRolledBack, rs.gen, cur.gen)
	}
	if rs.rev != cur.rev {
		k.ring.Store(rs)
	}
	return nil
}

// Generation returns the keyring's generation: one more with every change
// (Rotate, RetireBefore, Rekey); 0 for a keyring not changed since it was
// created by a version without generations.
func (k *Keyring) Generation() uint64 {
	rs := k.ring.Load()
	if rs == nil {
		return 0
	}
	return rs.gen
}

// Terms returns the key terms the keyring holds, oldest first.
func (k *Keyring) Terms() []uint32 {
	rs := k.ring.Load()
	if rs == nil {
		return nil
	}
	out := make([]uint32, len(rs.terms))
	for i, t := range rs.terms {
		out[i] = t.Term
	}
	return out
}

// RetireBefore drops from the keyring every term older than term, which
// must be at most the current one: values sealed under them no longer
// open, here or in any process that reloads the keyring. The caller checks
// first that no stored value uses them (vault.RetireKeys). It returns the
// terms it dropped (none: nothing is written).
func (k *Keyring) RetireBefore(ctx context.Context, term uint32) ([]uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for attempt := 1; ; attempt++ {
		cur := k.ring.Load()
		if cur == nil {
			return nil, errNoKeyring
		}
		if term > cur.current {
			return nil, fmt.Errorf("seal: retire keys before term %d: the current term is %d", term, cur.current)
		}
		var keep []ringTerm
		var dropped []uint32
		for _, t := range cur.terms {
			if t.Term < term {
				dropped = append(dropped, t.Term)
			} else {
				keep = append(keep, t)
			}
		}
		if len(dropped) == 0 {
			return nil, nil
		}
		next, err := newRingState(keep, 0)
		if err != nil {
			return nil, err
		}
		err = k.write(ctx, cur, next)
		if err == nil {
			k.ring.Store(next)
			return dropped, nil
		}
		if !errors.Is(err, ErrConflict) || attempt == rotateAttempts {
			return nil, fmt.Errorf("seal: retire keys: %w", err)
		}
		if err := k.reloadLocked(ctx); err != nil {
			return nil, err
		}
	}
}

// Rekey seals the keyring under a new master key, in one write: from then
// on mk opens the store and the old master key does not (OpenKeyring
// refuses it with ErrWrongMasterKey; a process still running with it keeps
// its keys but cannot Reload). The data keys stay as they are: no record
// is rewritten. This Keyring uses mk from now on.
func (k *Keyring) Rekey(ctx context.Context, mk MasterKey) error {
	if mk == (MasterKey{}) {
		return errors.New("seal: rekey: the new master key is all zeros")
	}
	master, err := newAEAD(mk[:])
	if err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.master
	for attempt := 1; ; attempt++ {
		cur := k.ring.Load()
		if cur == nil {
			return errNoKeyring
		}
		next, err := newRingState(cur.terms, 0)
		if err != nil {
			return err
		}
		k.master = master
		err = k.write(ctx, cur, next)
		k.master = old
		if err == nil {
			k.master = master
			k.ring.Store(next)
			return nil
		}
		if !errors.Is(err, ErrConflict) || attempt == rotateAttempts {
			return fmt.Errorf("seal: rekey: %w", err)
		}
		if err := k.reloadLocked(ctx); err != nil {
			return err
		}
	}
}
