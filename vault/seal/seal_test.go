package seal_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/tokenvault/tokenvault/vault/seal"
)

// memStore is an in-memory seal.Store: a map with revisions.
type memStore struct {
	mu   sync.Mutex
	seq  uint64
	recs map[string]memRec
}

type memRec struct {
	val []byte
	rev uint64
}

func newMemStore() *memStore { return &memStore{recs: map[string]memRec{}} }

func (s *memStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recs[key]
	return bytes.Clone(r.val), r.rev, nil
}

func (s *memStore) Put(ctx context.Context, recs ...seal.Record) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range recs {
		if s.recs[r.Key].rev != r.IfRev {
			return nil, seal.ErrConflict
		}
	}
	s.seq++
	revs := make([]uint64, len(recs))
	for i, r := range recs {
		s.recs[r.Key] = memRec{bytes.Clone(r.Value), s.seq}
		revs[i] = s.seq
	}
	return revs, nil
}

func ringOpen(t testing.TB, st seal.Store, mk seal.MasterKey) *seal.Keyring {
	t.Helper()
	k, err := seal.OpenKeyring(context.Background(), st, mk)
	if err != nil {
		t.Fatalf("OpenKeyring() = %v", err)
	}
	return k
}

func ringMasterKey(t testing.TB) seal.MasterKey {
	t.Helper()
	mk, err := seal.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	return mk
}

func ringSeal(t testing.TB, k *seal.Keyring, key, plaintext string) []byte {
	t.Helper()
	sealed, err := k.Seal(key, []byte(plaintext))
	if err != nil {
		t.Fatalf("Seal(%q) = %v", key, err)
	}
	return sealed
}

func ringWantOpen(t testing.TB, k *seal.Keyring, key string, sealed []byte, want string) {
	t.Helper()
	got, err := k.Open(key, sealed)
	if err != nil || string(got) != want {
		t.Fatalf("Open(%q) = %q, %v; want %q", key, got, err, want)
	}
}

func TestKeyring_SealOpen_RoundTrip(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	tests := []struct {
		name, key string
		plaintext []byte
	}{
		{"empty", "conn/1", nil},
		{"short", "conn/1", []byte("xoxb-refresh")},
		{"json", "conn/c_8f3a", []byte(`{"access_token":"ya29.a0Af","refresh_token":"1//0g"}`)},
		{"binary", "state/ab12", []byte{0, 1, 2, 0xff, 0xfe}},
		{"large", "conn/big", bytes.Repeat([]byte("0123456789abcdef"), 4096)},
		{"empty key", "", []byte("v")},
		{"non-ascii key", "conn/é", []byte("v")},
	}
	for _, tt := range tests {
		sealed, err := k.Seal(tt.key, tt.plaintext)
		if err != nil {
			t.Fatalf("%s: Seal(%q) = %v", tt.name, tt.key, err)
		}
		if want := len(tt.plaintext) + 33; len(sealed) != want || cap(sealed) != want {
			t.Errorf("%s: Seal(%q) len %d cap %d; want %d", tt.name, tt.key, len(sealed), cap(sealed), want)
		}
		if term, err := seal.TermOf(sealed); term != 1 || err != nil {
			t.Errorf("%s: TermOf(Seal(%q)) = %d, %v; want 1, nil", tt.name, tt.key, term, err)
		}
		if len(tt.plaintext) > 8 && bytes.Contains(sealed, tt.plaintext[:8]) {
			t.Errorf("%s: Seal(%q) contains the plaintext", tt.name, tt.key)
		}
		got, err := k.Open(tt.key, sealed)
		if err != nil || !bytes.Equal(got, tt.plaintext) {
			t.Errorf("%s: Open(%q) = %.20q, %v; want %.20q", tt.name, tt.key, got, err, tt.plaintext)
		}
	}
}

// ringRegion names the part of a sealed value byte i belongs to.
func ringRegion(i, n int) string {
	switch {
	case i == 0:
		return "version"
	case i < 5:
		return "term"
	case i < 17:
		return "nonce"
	case i < n-16:
		return "ciphertext"
	}
	return "tag"
}

func TestKeyring_Open_FlippedByte(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	sealed := ringSeal(t, k, "conn/1", "refresh token")
	for i := range sealed {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(sealed)
			bad[i] ^= bit
			if got, err := k.Open("conn/1", bad); !errors.Is(err, seal.ErrBroken) {
				t.Errorf("Open(%q) with byte %d (%s) ^ %#x = %q, %v; want ErrSealBroken", "conn/1", i, ringRegion(i, len(sealed)), bit, got, err)
			}
		}
	}
	ringWantOpen(t, k, "conn/1", sealed, "refresh token") // the original is intact
}

func TestKeyring_Open_MovedValue(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	sealed := ringSeal(t, k, "conn/1", "refresh token")
	for _, key := range []string{"conn/2", "conn/10", "conn/", "conn/1 ", "Conn/1", "state/1", "", "meta/keyring"} {
		if got, err := k.Open(key, sealed); !errors.Is(err, seal.ErrBroken) {
			t.Errorf("Open(%q) of a value sealed for %q = %q, %v; want ErrSealBroken", key, "conn/1", got, err)
		}
	}
}

func TestKeyring_Open_Truncated(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	sealed := ringSeal(t, k, "conn/1", "refresh token")
	for n := range len(sealed) {
		if got, err := k.Open("conn/1", sealed[:n]); !errors.Is(err, seal.ErrBroken) {
			t.Errorf("Open(%q) truncated to %d of %d bytes = %q, %v; want ErrSealBroken", "conn/1", n, len(sealed), got, err)
		}
	}
	if got, err := k.Open("conn/1", append(bytes.Clone(sealed), 0)); !errors.Is(err, seal.ErrBroken) {
		t.Errorf("Open(%q) with a byte appended = %q, %v; want ErrSealBroken", "conn/1", got, err)
	}
}

func TestKeyring_Open_UnknownTerm(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	sealed := ringSeal(t, k, "conn/1", "refresh token")
	other := ringOpen(t, newMemStore(), ringMasterKey(t)) // also term 1, another key
	tests := []struct {
		name   string
		sealed []byte
	}{
		{"term 0 (the master key's)", ringWithTerm(sealed, 0)},
		{"term 2", ringWithTerm(sealed, 2)},
		{"term 2^32-1", ringWithTerm(sealed, 1<<32-1)},
		{"another keyring's term 1", ringSeal(t, other, "conn/1", "refresh token")},
	}
	for _, tt := range tests {
		if got, err := k.Open("conn/1", tt.sealed); !errors.Is(err, seal.ErrBroken) {
			t.Errorf("Open(%q) of a value under %s = %q, %v; want ErrSealBroken", "conn/1", tt.name, got, err)
		}
	}
}

func ringWithTerm(sealed []byte, term uint32) []byte {
	b := bytes.Clone(sealed)
	b[1], b[2], b[3], b[4] = byte(term>>24), byte(term>>16), byte(term>>8), byte(term)
	return b
}

func TestTermOf(t *testing.T) {
	valid := append([]byte{1, 0, 0, 1, 2}, make([]byte, 12+16)...)
	tests := []struct {
		name    string
		sealed  []byte
		want    uint32
		wantErr error
	}{
		{"term 258", valid, 258, nil},
		{"nil", nil, 0, seal.ErrBroken},
		{"header only", valid[:17], 0, seal.ErrBroken},
		{"one short", valid[:32], 0, seal.ErrBroken},
		{"version 2", append([]byte{2}, valid[1:]...), 0, seal.ErrBroken},
		{"plain json", []byte(`{"access_token":"ya29.a0Af-not-sealed"}`), 0, seal.ErrBroken},
	}
	for _, tt := range tests {
		got, err := seal.TermOf(tt.sealed)
		if got != tt.want || !errors.Is(err, tt.wantErr) {
			t.Errorf("TermOf(%s) = %d, %v; want %d, %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestKeyring_Seal_DistinctNonces(t *testing.T) {
	const n = 100_000
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	seen := make(map[[12]byte]struct{}, n)
	plaintext := []byte("v")
	for i := range n {
		sealed, err := k.Seal("conn/1", plaintext)
		if err != nil {
			t.Fatal(err)
		}
		nonce := [12]byte(sealed[5:17])
		if _, dup := seen[nonce]; dup {
			t.Fatalf("Seal #%d repeated nonce %x", i, nonce)
		}
		seen[nonce] = struct{}{}
	}
}

func TestParseMasterKey(t *testing.T) {
	var key seal.MasterKey
	for i := range key {
		key[i] = byte(0xf0 + i) // bytes that make + / - _ show up in base64
	}
	b64 := base64.StdEncoding.EncodeToString(key[:])
	tests := []struct {
		name  string
		input []byte
		ok    bool
	}{
		{"raw", key[:], true},
		{"base64 std", []byte(b64), true},
		{"base64 std unpadded", []byte(strings.TrimRight(b64, "=")), true},
		{"base64 url", []byte(base64.URLEncoding.EncodeToString(key[:])), true},
		{"base64 url unpadded", []byte(base64.RawURLEncoding.EncodeToString(key[:])), true},
		{"hex", []byte(hex.EncodeToString(key[:])), true},
		{"hex upper", []byte(strings.ToUpper(hex.EncodeToString(key[:]))), true},
		{"base64 with newline", []byte(b64 + "\n"), true},
		{"hex with spaces", []byte("  " + hex.EncodeToString(key[:]) + " \r\n"), true},
		{"Encode", []byte(key.Encode()), true},
		{"empty", nil, false},
		{"31 raw bytes", key[:31], false},
		{"33 raw bytes", append(key[:], 0), false},
		{"base64 of 31 bytes", []byte(base64.StdEncoding.EncodeToString(key[:31])), false},
		{"base64 of 33 bytes", []byte(base64.StdEncoding.EncodeToString(append(key[:], 1))), false},
		{"hex of 31 bytes", []byte(hex.EncodeToString(key[:31])), false},
		{"hex with a bad digit", []byte("zz" + hex.EncodeToString(key[:])[2:]), false},
		{"a passphrase", []byte("correct horse battery staple"), false},
		{"long text", bytes.Repeat([]byte("A"), 10000), false},
		{"all zeros", make([]byte, 32), false},
		{"a 32-character password", []byte("correct-horse-battery-staple-123"), false},
		{"a 16-byte key in hex", []byte(hex.EncodeToString(key[:16])), false},
		{"all zeros in hex", bytes.Repeat([]byte("0"), 64), false},
	}
	for _, tt := range tests {
		got, err := seal.ParseMasterKey(tt.input)
		if tt.ok {
			if err != nil || got != key {
				t.Errorf("ParseMasterKey(%s) = %v; want the key", tt.name, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("ParseMasterKey(%s) = nil error; want an error", tt.name)
			continue
		}
		if len(tt.input) > 4 && strings.Contains(err.Error(), string(tt.input[:5])) {
			t.Errorf("ParseMasterKey(%s) error %q quotes the input", tt.name, err)
		}
	}
}

func TestGenerateMasterKey(t *testing.T) {
	a, b := ringMasterKey(t), ringMasterKey(t)
	if a == b || a == (seal.MasterKey{}) {
		t.Fatalf("GenerateMasterKey() twice gave equal or zero keys")
	}
	if got, err := seal.ParseMasterKey([]byte(a.Encode())); err != nil || got != a {
		t.Errorf("ParseMasterKey(Encode()) = %v; want the key back", err)
	}
}

// TestMasterKey_NeverPrints formats a key every way a log line might.
func TestMasterKey_NeverPrints(t *testing.T) {
	mk := ringMasterKey(t)
	var jsonLog, textLog bytes.Buffer
	slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("m", "key", mk)
	slog.New(slog.NewTextHandler(&textLog, nil)).Info("m", "key", mk)
	marshaled, err := json.Marshal(struct{ Key seal.MasterKey }{mk})
	if err != nil {
		t.Fatal(err)
	}
	outputs := map[string]string{
		"String":    mk.String(),
		"%v":        fmt.Sprintf("%v", mk),
		"%+v":       fmt.Sprintf("%+v", mk),
		"%#v":       fmt.Sprintf("%#v", mk),
		"%s":        fmt.Sprintf("%s", mk),
		"%x":        fmt.Sprintf("%x", mk),
		"%X":        fmt.Sprintf("%X", mk),
		"%d":        fmt.Sprintf("%d", mk),
		"%q":        fmt.Sprintf("%q", mk),
		"%v field":  fmt.Sprintf("%v", struct{ Key seal.MasterKey }{mk}),
		"slog JSON": jsonLog.String(),
		"slog text": textLog.String(),
		"json":      string(marshaled),
	}
	leaks := []string{
		string(mk[:]),
		hex.EncodeToString(mk[:]),
		strings.ToUpper(hex.EncodeToString(mk[:])),
		mk.Encode()[:20],
		fmt.Sprint(mk[0], mk[1], mk[2], mk[3]),
		fmt.Sprintf("%d %d %d %d", mk[0], mk[1], mk[2], mk[3]),
	}
	for how, out := range outputs {
		if !strings.Contains(out, "MasterKey(redacted)") {
			t.Errorf("%s of a MasterKey = %q; want it to say MasterKey(redacted)", how, out)
		}
		for _, leak := range leaks {
			if strings.Contains(out, leak) {
				t.Errorf("%s of a MasterKey = %q; it shows the key", how, out)
			}
		}
	}
}

func FuzzParseMasterKey(f *testing.F) {
	f.Add([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"))
	f.Add([]byte("8J+YgfCfmIHwn5iB8J+YgfCfmIHwn5iB8J+YgfCfmIE="))
	f.Add(make([]byte, 32))
	f.Add([]byte(" \n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mk, err := seal.ParseMasterKey(b)
		if err != nil {
			return
		}
		if mk == (seal.MasterKey{}) {
			t.Fatalf("ParseMasterKey(%q) = the zero key, nil", b)
		}
		if again, err := seal.ParseMasterKey([]byte(mk.Encode())); err != nil || again != mk {
			t.Fatalf("ParseMasterKey(Encode()) of ParseMasterKey(%q) = %v; want the same key", b, err)
		}
	})
}

func BenchmarkKeyring_Seal(b *testing.B) {
	k := ringOpen(b, newMemStore(), ringMasterKey(b))
	plain := make([]byte, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		if _, err := k.Seal("conn/c_8f3a2b", plain); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkKeyring_Open(b *testing.B) {
	k := ringOpen(b, newMemStore(), ringMasterKey(b))
	sealed, err := k.Seal("conn/c_8f3a2b", make([]byte, 512))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(512)
	for b.Loop() {
		if _, err := k.Open("conn/c_8f3a2b", sealed); err != nil {
			b.Fatal(err)
		}
	}
}

// BrokenReason names what is wrong with a value that does not open, the
// quarantine's reason, for both Open and OpenAppend.
func TestBrokenReason(t *testing.T) {
	k := ringOpen(t, newMemStore(), ringMasterKey(t))
	good := ringSeal(t, k, "conn/a", "record")
	flip := slices.Clone(good)
	flip[len(flip)-1] ^= 1
	version := slices.Clone(good)
	version[0] = 9
	for _, tc := range []struct {
		name, key string
		val       []byte
		want      string
	}{
		{"flipped", "conn/a", flip, seal.BrokenAuth},
		{"moved", "conn/b", good, seal.BrokenAuth},
		{"truncated", "conn/a", good[:10], seal.BrokenFraming},
		{"version", "conn/a", version, seal.BrokenFraming},
		{"unknown term", "conn/a", ringWithTerm(good, 7), seal.BrokenUnknownTerm},
	} {
		_, err := k.Open(tc.key, tc.val)
		_, err2 := k.OpenAppend(nil, tc.key, tc.val)
		if got, got2 := seal.BrokenReason(err), seal.BrokenReason(err2); got != tc.want || got2 != tc.want {
			t.Errorf("%s: BrokenReason = %q (Open), %q (OpenAppend); want %q", tc.name, got, got2, tc.want)
		}
	}
	if r := seal.BrokenReason(errors.New("other")); r != "" {
		t.Errorf("BrokenReason(other) = %q", r)
	}
}
