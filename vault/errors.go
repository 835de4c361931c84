package vault

import "errors"

var (
	// ErrNotFound is returned when a key or record does not exist.
	ErrNotFound = errors.New("vault: not found")

	// ErrWrongMasterKey is returned by OpenKeyring when the master key does
	// not open the stored keyring (or the keyring record is damaged: the two
	// cannot be told apart). Nothing is written to the store.
	ErrWrongMasterKey = errors.New("vault: master key does not open the keyring")

	// ErrSealBroken is returned by Keyring.Open for a value that does not
	// authenticate: tampered with, truncated, sealed under another key or
	// key term, or moved to another record.
	ErrSealBroken = errors.New("vault: sealed value does not open")

	// ErrSchemaVersion is returned by OpenKeyring when the store was written
	// by a newer version of tokenvault than this one.
	ErrSchemaVersion = errors.New("vault: unsupported store schema version")
)
