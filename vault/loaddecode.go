package vault

import (
	"errors"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// Loading decodes every record once, and only its resident part stays
// (resident.go). The general decoder (unmarshalRecord: the protobuf
// runtime, then fromRecord, then newResident) builds the whole record
// first: every refresh token, secret and transition as a string of its
// own, maps for metadata, then the resident, interning each of its shared
// parts under a lock. loadDecoder reads the protobuf encoding of
// tokenvault.record.v1.Connection (record.proto) with protowire and builds
// the entry and its resident directly: it allocates only what stays
// (identity, access tokens, metadata), checks what it skips as the protobuf
// runtime would (UTF-8 strings, well-formed fields), and reuses the shared
// parts of the record decoded before on the same worker when they are the
// same (a fleet's records mostly share status, placement, scopes and token
// types). Anything it does not expect (a JSON record, a field twice where
// the runtime would merge, a wire type the schema does not give the field,
// malformed bytes) sends the record to the general decoder, which has the
// last word, errors included. TestLoadDecoder_SameAsGeneral holds the two
// to the same result.

// errGeneral is loadDecoder's answer for a record it leaves to the general
// decoder.
var errGeneral = errors.New("vault: record left to the general decoder")

// rawToken and rawRecord are the fields of one record that the resident
// needs, as slices of its plaintext: nothing is copied until it is known
// to stay.
type rawToken struct {
	name, access, tokenType []byte
	refreshable             bool
	expiry, issuedAt        int64
	scopes                  [][]byte
}

type rawRecord struct {
	id, owner, tenant, provider, label, status, reason []byte
	requested                                          [][]byte
	createdAt, lastUsedAt, validatedAt, retryAt        int64
	generation                                         uint64
	failures                                           int64
	inFlight, grant                                    bool
	inFlightCred                                       []byte
	scopes                                             [][]byte
	metadata                                           [][2][]byte
	tokens                                             []rawToken
	missing                                            [][]byte
}

// reset empties r, keeping its slices' room (a token's scopes are reset
// as the token is reused: parseGrant).
func (r *rawRecord) reset() {
	*r = rawRecord{
		requested: r.requested[:0], scopes: r.scopes[:0], metadata: r.metadata[:0],
		tokens: r.tokens[:0], missing: r.missing[:0],
	}
}

// loadDecoder decodes records for one loading worker: not safe for
// concurrent use. Its scratch space and its memory of the shared parts
// last built are reused from record to record.
type loadDecoder struct {
	raw rawRecord

	// The shared parts of the last record built, and what they were built
	// from.
	status, reason   string
	state            *residentState
	tenant, provider string
	place            *placement
	grantScopes      []string
	grantMissing     []string
	grant            *residentGrant // nil: none yet, or the last had metadata
	metas            []tokenMemo
}

type tokenMemo struct {
	name, tokenType string
	scopes          []string
	meta            *tokenMeta
}

// decode returns the entry of the record plain, its resident stored, as
// newEntry and newResident would build them from unmarshalRecord's
// Connection; errGeneral if the record is for the general decoder. The
// entry keeps none of plain's memory.
func (d *loadDecoder) decode(plain []byte) (*entry, error) {
	if len(plain) > 0 && plain[0] == '{' {
		return nil, errGeneral // a record from the JSON days
	}
	r := &d.raw
	r.reset()
	if err := r.parse(plain); err != nil {
		return nil, errGeneral
	}
	e := &entry{id: string(r.id), owner: string(r.owner), label: string(r.label), placement: d.placement(r)}
	res := &resident{
		residentState: d.residentState(r),
		gen:           r.generation,
		createdAt:     renanos(r.createdAt),
		lastUsedAt:    renanos(r.lastUsedAt),
		validatedAt:   renanos(r.validatedAt),
		retryAt:       renanos(r.retryAt),
		failures:      int32(min(int(r.failures), math.MaxInt32)),
		inFlight:      r.inFlight,
		grant:         d.residentGrant(r),
		tokens:        make([]residentToken, len(r.tokens)),
	}
	if r.inFlight {
		res.inFlightCred = intern(string(r.inFlightCred))
	}
	for i := range r.tokens {
		t := &r.tokens[i]
		res.tokens[i] = residentToken{
			tokenMeta:   d.tokenMeta(i, t),
			access:      string(t.access),
			expiry:      renanos(t.expiry),
			issuedAt:    renanos(t.issuedAt),
			refreshable: t.refreshable,
		}
	}
	e.res.Store(res)
	if res.lastUsedAt > 0 {
		e.lastUsed.Store(res.lastUsedAt)
	}
	return e, nil
}

// renanos is what a stored time becomes through timeOf and nanos.
func renanos(ns int64) int64 { return nanos(timeOf(ns)) }

func (d *loadDecoder) placement(r *rawRecord) *placement {
	if d.place == nil || string(r.tenant) != d.tenant || string(r.provider) != d.provider {
		d.tenant, d.provider = string(r.tenant), string(r.provider)
		d.place = internPlacement(d.tenant, d.provider)
	}
	return d.place
}

func (d *loadDecoder) residentState(r *rawRecord) *residentState {
	if d.state == nil || string(r.status) != d.status || string(r.reason) != d.reason {
		d.status, d.reason = string(r.status), string(r.reason)
		d.state = internState(Status(d.status), d.reason)
	}
	return d.state
}

func (d *loadDecoder) residentGrant(r *rawRecord) *residentGrant {
	// missing(requested, granted), on the raw bytes.
	for _, s := range r.requested {
		if !containsBytes(r.scopes, s) {
			r.missing = append(r.missing, s)
		}
	}
	if len(r.metadata) > 0 {
		md := make(map[string]string, len(r.metadata))
		for _, kv := range r.metadata {
			md[string(kv[0])] = string(kv[1])
		}
		return internGrant(copyStrings(r.scopes), copyStrings(r.missing), md)
	}
	if d.grant == nil || !sameStrings(r.scopes, d.grantScopes) || !sameStrings(r.missing, d.grantMissing) {
		d.grantScopes, d.grantMissing = copyStrings(r.scopes), copyStrings(r.missing)
		d.grant = internGrant(d.grantScopes, d.grantMissing, nil)
	}
	return d.grant
}

func (d *loadDecoder) tokenMeta(i int, t *rawToken) *tokenMeta {
	if i >= len(d.metas) {
		d.metas = append(d.metas, tokenMemo{})
	}
	m := &d.metas[i]
	if m.meta == nil || string(t.name) != m.name || string(t.tokenType) != m.tokenType || !sameStrings(t.scopes, m.scopes) {
		m.name, m.tokenType, m.scopes = string(t.name), string(t.tokenType), copyStrings(t.scopes)
		m.meta = internTokenMeta(m.name, m.tokenType, m.scopes)
	}
	return m.meta
}

// copyStrings copies bs; nil if empty (as nilIfEmpty).
func copyStrings(bs [][]byte) []string {
	if len(bs) == 0 {
		return nil
	}
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

func sameStrings(bs [][]byte, ss []string) bool {
	if len(bs) != len(ss) {
		return false
	}
	for i := range bs {
		if string(bs[i]) != ss[i] {
			return false
		}
	}
	return true
}

func containsBytes(bs [][]byte, b []byte) bool {
	for _, x := range bs {
		if string(x) == string(b) {
			return true
		}
	}
	return false
}

// The parsers below return errGeneral for anything unexpected; the general
// decoder then decides.

// field reads one field's tag.
func field(b []byte) (protowire.Number, protowire.Type, int, error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return 0, 0, 0, errGeneral
	}
	return num, typ, n, nil
}

func varint(b []byte, typ protowire.Type) (uint64, int, error) {
	if typ != protowire.VarintType {
		return 0, 0, errGeneral
	}
	v, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, 0, errGeneral
	}
	return v, n, nil
}

func bytesField(b []byte, typ protowire.Type) ([]byte, int, error) {
	if typ != protowire.BytesType {
		return nil, 0, errGeneral
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return nil, 0, errGeneral
	}
	return v, n, nil
}

// str reads a string field: valid UTF-8, as proto3 requires.
func str(b []byte, typ protowire.Type) ([]byte, int, error) {
	v, n, err := bytesField(b, typ)
	if err != nil || !utf8.Valid(v) {
		return nil, 0, errGeneral
	}
	return v, n, nil
}

// skip skips a field the resident does not need: unknown fields as the
// runtime keeps them (well-formed), a known one checked as it would be.
// strs are the message's string fields, msgs its message fields with the
// string fields of each.
func skip(b []byte, num protowire.Number, typ protowire.Type, strs []protowire.Number, msgs map[protowire.Number][]protowire.Number) (int, error) {
	for _, s := range strs {
		if num == s {
			_, n, err := str(b, typ)
			return n, err
		}
	}
	if inner, ok := msgs[num]; ok {
		v, n, err := bytesField(b, typ)
		if err != nil {
			return 0, err
		}
		if err := checkStrings(v, inner); err != nil {
			return 0, err
		}
		return n, nil
	}
	n := protowire.ConsumeFieldValue(num, typ, b)
	if n < 0 {
		return 0, errGeneral
	}
	return n, nil
}

// checkStrings checks a skipped message whose string fields are strs (its
// other fields are scalars).
func checkStrings(b []byte, strs []protowire.Number) error {
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return err
		}
		b = b[n:]
		if n, err = skip(b, num, typ, strs, nil); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// The fields of record.proto that the resident does not use, checked when
// skipped: strings, and messages with their own string fields.
var (
	connSkipStrings  = []protowire.Number{6, 21, 31}
	connSkipMessages = map[protowire.Number][]protowire.Number{16: {2, 3, 4}, 30: {1, 2}} // transitions, app_metadata
	grantSkipStrings = []protowire.Number{3}
	grantSkipMsgs    = map[protowire.Number][]protowire.Number{5: {1, 2}} // secrets
	mapEntryStrings  = []protowire.Number{1, 2}
	inFlightStrings  = []protowire.Number{1}
)

// parse reads a tokenvault.record.v1.Connection.
func (r *rawRecord) parse(b []byte) error {
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return err
		}
		b = b[n:]
		var s *[]byte
		var i *int64
		switch num {
		case 1:
			s = &r.id
		case 2:
			s = &r.owner
		case 3:
			s = &r.tenant
		case 4:
			s = &r.provider
		case 5:
			s = &r.label
		case 7:
			s = &r.status
		case 8:
			s = &r.reason
		case 9:
			v, n, err := str(b, typ)
			if err != nil {
				return err
			}
			r.requested = append(r.requested, v)
			b = b[n:]
			continue
		case 10:
			i = &r.createdAt
		case 13:
			i = &r.lastUsedAt
		case 14:
			i = &r.validatedAt
		case 15:
			v, n, err := varint(b, typ)
			if err != nil {
				return err
			}
			r.generation = v
			b = b[n:]
			continue
		case 20:
			i = &r.failures
		case 22:
			i = &r.retryAt
		case 11, 12, 17, 18, 32:
			if _, n, err = varint(b, typ); err != nil {
				return err
			}
			b = b[n:]
			continue
		case 19:
			if r.inFlight {
				return errGeneral // the runtime would merge the two
			}
			v, n, err := bytesField(b, typ)
			if err != nil {
				return err
			}
			if err := r.parseInFlight(v); err != nil {
				return err
			}
			r.inFlight = true
			b = b[n:]
			continue
		case 23:
			if r.grant {
				return errGeneral
			}
			v, n, err := bytesField(b, typ)
			if err != nil {
				return err
			}
			if err := r.parseGrant(v); err != nil {
				return err
			}
			r.grant = true
			b = b[n:]
			continue
		default:
			if n, err = skip(b, num, typ, connSkipStrings, connSkipMessages); err != nil {
				return err
			}
			b = b[n:]
			continue
		}
		if s != nil {
			v, n, err := str(b, typ)
			if err != nil {
				return err
			}
			*s = v
			b = b[n:]
			continue
		}
		v, n, err := varint(b, typ)
		if err != nil {
			return err
		}
		*i = int64(v)
		b = b[n:]
	}
	return nil
}

func (r *rawRecord) parseInFlight(b []byte) error {
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return err
		}
		b = b[n:]
		switch num {
		case 1:
			v, n, err := str(b, typ)
			if err != nil {
				return err
			}
			r.inFlightCred = v
			b = b[n:]
		case 2, 3:
			_, n, err := varint(b, typ)
			if err != nil {
				return err
			}
			b = b[n:]
		default:
			n, err := skip(b, num, typ, inFlightStrings, nil)
			if err != nil {
				return err
			}
			b = b[n:]
		}
	}
	return nil
}

func (r *rawRecord) parseGrant(b []byte) error {
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return err
		}
		b = b[n:]
		switch num {
		case 1:
			v, n, err := bytesField(b, typ)
			if err != nil {
				return err
			}
			if len(r.tokens) < cap(r.tokens) {
				r.tokens = r.tokens[:len(r.tokens)+1]
			} else {
				r.tokens = append(r.tokens, rawToken{})
			}
			t := &r.tokens[len(r.tokens)-1]
			*t = rawToken{scopes: t.scopes[:0]}
			if err := t.parse(v); err != nil {
				return err
			}
			b = b[n:]
		case 2:
			v, n, err := str(b, typ)
			if err != nil {
				return err
			}
			r.scopes = append(r.scopes, v)
			b = b[n:]
		case 4:
			v, n, err := bytesField(b, typ)
			if err != nil {
				return err
			}
			kv, err := parseMapEntry(v)
			if err != nil {
				return err
			}
			r.metadata = append(r.metadata, kv)
			b = b[n:]
		default:
			n, err := skip(b, num, typ, grantSkipStrings, grantSkipMsgs)
			if err != nil {
				return err
			}
			b = b[n:]
		}
	}
	return nil
}

// parseMapEntry reads a map<string, string> entry: an absent key or value
// is "".
func parseMapEntry(b []byte) ([2][]byte, error) {
	var kv [2][]byte
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return kv, err
		}
		b = b[n:]
		if num == 1 || num == 2 {
			v, n, err := str(b, typ)
			if err != nil {
				return kv, err
			}
			kv[num-1] = v
			b = b[n:]
			continue
		}
		if n, err = skip(b, num, typ, mapEntryStrings, nil); err != nil {
			return kv, err
		}
		b = b[n:]
	}
	return kv, nil
}

func (t *rawToken) parse(b []byte) error {
	for len(b) > 0 {
		num, typ, n, err := field(b)
		if err != nil {
			return err
		}
		b = b[n:]
		switch num {
		case 1, 2, 3, 4, 7:
			v, n, err := str(b, typ)
			if err != nil {
				return err
			}
			switch num {
			case 1:
				t.name = v
			case 2:
				t.access = v
			case 3:
				t.refreshable = len(v) > 0 // only whether there is one
			case 4:
				t.tokenType = v
			case 7:
				t.scopes = append(t.scopes, v)
			}
			b = b[n:]
		case 5, 6, 8:
			v, n, err := varint(b, typ)
			if err != nil {
				return err
			}
			switch num {
			case 5:
				t.expiry = int64(v)
			case 8:
				t.issuedAt = int64(v)
			}
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return errGeneral
			}
			b = b[n:]
		}
	}
	return nil
}
