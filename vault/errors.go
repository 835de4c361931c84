package vault

import "errors"

// ErrNotFound is returned when a key or record does not exist.
var ErrNotFound = errors.New("vault: not found")
