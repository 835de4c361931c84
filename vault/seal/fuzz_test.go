package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"testing"
)

// FuzzKeyringOpen feeds Open arbitrary keys and bytes. Open must never panic
// and must accept only what the keyring sealed. The keyring's keys and the
// seeds' nonces are fixed, so every fuzzing worker agrees on which inputs are
// genuine; the seeds are built here from the format's description rather
// than by Seal, which checks Seal's layout too.
func FuzzKeyringOpen(f *testing.F) {
	keys := map[uint32][]byte{
		1: bytes.Repeat([]byte{0x11}, 32),
		2: bytes.Repeat([]byte{0x22}, 32),
	}
	rs, err := newRingState([]ringTerm{{Term: 1, Key: keys[1]}, {Term: 2, Key: keys[2]}}, 1)
	if err != nil {
		f.Fatal(err)
	}
	k := new(Keyring)
	k.ring.Store(rs)

	genuine := map[string][]byte{} // storage key + "\x00" + sealed -> plaintext
	for i, seed := range []struct {
		term      uint32
		key       string
		plaintext string
	}{
		{1, "conn/1", `{"refresh_token":"1//0g"}`},
		{2, "conn/1", `{"refresh_token":"1//0g"}`},
		{2, "state/ab", ""},
		{1, "", "x"},
		{2, "conn/é", string(bytes.Repeat([]byte{0}, 100))},
	} {
		hdr := make([]byte, 17)
		hdr[0] = 1
		binary.BigEndian.PutUint32(hdr[1:5], seed.term)
		for j := range 12 {
			hdr[5+j] = byte(i*12 + j)
		}
		block, err := aes.NewCipher(keys[seed.term])
		if err != nil {
			f.Fatal(err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			f.Fatal(err)
		}
		sealed := aead.Seal(bytes.Clone(hdr), hdr[5:], []byte(seed.plaintext), append(bytes.Clone(hdr), seed.key...))
		if got, err := k.Open(seed.key, sealed); err != nil || string(got) != seed.plaintext {
			f.Fatalf("Open(%q) of a value built from the format = %q, %v; want %q", seed.key, got, err, seed.plaintext)
		}
		genuine[seed.key+"\x00"+string(sealed)] = []byte(seed.plaintext)
		f.Add(seed.key, sealed)
	}
	f.Add("conn/1", []byte(nil))
	f.Add("conn/1", []byte(`{"access_token":"not sealed"}`))

	f.Fuzz(func(t *testing.T, key string, data []byte) {
		got, err := k.Open(key, data)
		if err != nil {
			if !errors.Is(err, ErrBroken) {
				t.Fatalf("Open(%q, %x) = %v; want an error wrapping ErrBroken", key, data, err)
			}
			if got != nil {
				t.Fatalf("Open(%q, %x) returned plaintext with error %v", key, data, err)
			}
			return
		}
		want, ok := genuine[key+"\x00"+string(data)]
		if !ok {
			t.Fatalf("Open(%q, %x) = %q, nil; want ErrBroken for bytes the keyring never sealed", key, data, got)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("Open(%q, %x) = %q; want %q", key, data, got, want)
		}
	})
}
