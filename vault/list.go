package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
)

// Reading connections: one by id, or a page of them by filter.

// Get returns the connection with the given id, read from the store, or
// ErrNotFound. The record holds token material: callers outside the
// process get Redacted().
func (v *Vault) Get(ctx context.Context, id string) (*Connection, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, err
	}
	e := v.entry(id)
	if e == nil {
		return nil, v.missing(id)
	}
	key := connPrefix + id
	val, _, err := v.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("vault: read %s: %w", id, err)
	}
	c, err := v.decode(key, val)
	if errors.Is(err, ErrRecordUnreadable) {
		v.forgetIfFree(e)
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	if used := e.lastUsed.Load(); used > 0 && used > nanos(c.LastUsedAt) {
		c.LastUsedAt = timeOf(used)
	}
	return c, nil
}

// List returns up to limit connections matching f with ids after `after`,
// in id order, and the id to pass as after for the next page ("" at the
// end).
func (v *Vault) List(ctx context.Context, f Filter, after string, limit int) ([]*Connection, string, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = 100
	}
	v.mu.RLock()
	start, _ := slices.BinarySearch(v.ids, after)
	if start < len(v.ids) && v.ids[start] == after {
		start++
	}
	var ids []string
	next := ""
	for _, id := range v.ids[start:] {
		if !f.match(v.entries[id]) {
			continue
		}
		if len(ids) == limit {
			next = ids[len(ids)-1]
			break
		}
		ids = append(ids, id)
	}
	v.mu.RUnlock()
	out := make([]*Connection, 0, len(ids))
	for _, id := range ids {
		c, err := v.Get(ctx, id)
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrRecordUnreadable) {
			continue // deleted since the page was chosen, or quarantined (Unreadable lists it)
		}
		if err != nil {
			return nil, "", err
		}
		out = append(out, c)
	}
	if len(f.App) > 0 {
		return v.listApp(ctx, f, out, next, limit)
	}
	return out, next, nil
}

// PageToken encodes a List cursor for callers outside the process.
func PageToken(after string) string {
	if after == "" {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString([]byte(after))
}

// ParsePageToken decodes a PageToken.
func ParsePageToken(tok string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return "", fmt.Errorf("%w: bad page token", ErrInvalidArgument)
	}
	return string(b), nil
}
