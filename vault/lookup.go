package vault

import (
	"context"
	"fmt"
	"slices"
)

// A Selector names a connection by its owner and provider, as the
// application knows it, instead of by its id. Label and Tenant narrow it;
// empty, each matches any.
type Selector struct {
	Owner, Provider string
	Label           string
	Tenant          string
}

// An AmbiguousError is Lookup's answer to a selector that matches several
// connections that are not revoked: how many, and how many distinct labels
// they carry (a selector with one of them names one, unless they differ by
// tenant). It wraps ErrInvalidArgument.
type AmbiguousError struct {
	Connections, Labels int
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("vault: the selector matches %d connections (%d labels)", e.Connections, e.Labels)
}

func (e *AmbiguousError) Unwrap() error { return ErrInvalidArgument }

// ownerKey is the key of the owner index (Vault.byOwner): the connections
// of one owner at one provider. Its strings are the entry's own.
type ownerKey struct{ owner, provider string }

// Lookup returns the id of the one connection sel names, from memory: the
// owner index and the residents, no store read.
//
// The candidates are the matching connections that are not revoked: one is
// the answer; several are an *AmbiguousError, never a pick. With none, the
// most recently created revoked match is the answer, so that using it
// reports the revocation (a connection revoked and connected again leaves
// its revoked record behind, which a live one outranks). With no match at
// all Lookup returns ErrNotFound.
func (v *Vault) Lookup(ctx context.Context, sel Selector) (string, error) {
	if err := v.waitLoaded(ctx); err != nil {
		return "", err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	cands := v.byOwner[ownerKey{sel.Owner, sel.Provider}]
	var live, revoked *entry
	var revokedAt int64
	n := 0
	for _, e := range cands {
		if !sel.matches(e) {
			continue
		}
		if r := e.res.Load(); r.status == StatusRevoked {
			if revoked == nil || r.createdAt > revokedAt {
				revoked, revokedAt = e, r.createdAt
			}
			continue
		}
		live = e
		n++
	}
	switch {
	case n == 1:
		return live.id, nil
	case n > 1:
		labels := map[string]bool{}
		for _, e := range cands {
			if sel.matches(e) && e.res.Load().status != StatusRevoked {
				labels[e.label] = true
			}
		}
		return "", &AmbiguousError{Connections: n, Labels: len(labels)}
	case revoked != nil:
		return revoked.id, nil
	}
	return "", fmt.Errorf("vault: no connection of the owner at provider %q: %w", sel.Provider, ErrNotFound)
}

func (sel Selector) matches(e *entry) bool {
	return (sel.Label == "" || sel.Label == e.label) && (sel.Tenant == "" || sel.Tenant == e.tenant)
}

// addEntry makes e known by id and in the owner index; v.ids, which stays
// sorted, is the caller's. v.mu must be held for writing. Every entry
// enters v.entries through it (TestVault_EntriesChangeThroughTheIndex).
func (v *Vault) addEntry(e *entry) {
	v.entries[e.id] = e
	k := ownerKey{e.owner, e.provider}
	v.byOwner[k] = append(v.byOwner[k], e)
}

// removeEntry forgets the entry of connection id, by id and in the owner
// index; v.ids is the caller's. v.mu must be held for writing.
func (v *Vault) removeEntry(id string) {
	e := v.entries[id]
	if e == nil {
		return
	}
	delete(v.entries, id)
	k := ownerKey{e.owner, e.provider}
	rest := slices.DeleteFunc(v.byOwner[k], func(x *entry) bool { return x == e })
	if len(rest) == 0 {
		delete(v.byOwner, k)
	} else {
		v.byOwner[k] = rest
	}
}
