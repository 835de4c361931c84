package vault

import (
	"go/ast"
	"slices"
	"testing"
)

// TestVault_EveryReaderOfTheConnectionsWaitsForTheLoad: while the
// connections load in the background (loading.go) the resident index is
// empty, so every exported method that reads it must wait for the load
// first (waitLoaded, waitLoadedForever) or handle the load itself. A new
// exported method must be put in one of the lists below; one listed as
// not reading the connections must not touch the index.
func TestVault_EveryReaderOfTheConnectionsWaitsForTheLoad(t *testing.T) {
	// Answer during the load from the record in the store (loading.go).
	loadAware := []string{"AccessToken", "ProviderOf", "IsUnreadable"}
	// Read neither v.entries, v.byOwner nor v.ids: the outbox, connect
	// flows before their callback, sessions, the keyring, counters, and
	// the load itself.
	free := []string{"StartConnect", "BeginConnect", "SweepStates", "LastEventSequence", "Events", "SweepEvents",
		"Subscribe", "CreateSession", "Session", "RekeyMaster", "FenceLost", "UnreadableCount",
		"Loaded", "LoadErr", "LoadDuration", "Loading", "WaitLoaded"}
	fset, funcs := packageFuncs(t)
	seen := map[string]bool{}
	for _, fn := range funcs {
		if fn.Recv == nil || !fn.Name.IsExported() || !isVaultRecv(fn.Recv) {
			continue
		}
		m := fn.Name.Name
		seen[m] = true
		switch {
		case slices.Contains(loadAware, m):
		case slices.Contains(free, m):
			if touchesIndex(fn.Body) {
				t.Errorf("%s: %s reads the connections: it must wait for the load", fset.Position(fn.Pos()), m)
			}
		default:
			if !waitsFirst(fn.Body) {
				t.Errorf("%s: %s does not wait for the load (v.waitLoaded) before its first use of the connections", fset.Position(fn.Pos()), m)
			}
		}
	}
	if len(seen) < 30 {
		t.Fatalf("found %d exported methods of *Vault; the parse is wrong", len(seen))
	}
}

func isVaultRecv(r *ast.FieldList) bool {
	if len(r.List) != 1 {
		return false
	}
	st, ok := r.List[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	id, ok := st.X.(*ast.Ident)
	return ok && id.Name == "Vault"
}

// touchesIndex reports whether body reads v.entries, v.byOwner, v.ids or
// calls v.entry.
func touchesIndex(body *ast.BlockStmt) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		if s, ok := n.(*ast.SelectorExpr); ok {
			switch s.Sel.Name {
			case "entries", "byOwner", "ids", "entry":
				found = true
			}
		}
		return !found
	})
	return found
}

// waitsFirst reports whether body calls waitLoaded or waitLoadedForever
// before any use of the index (statements in order, at the top level).
func waitsFirst(body *ast.BlockStmt) bool {
	for _, st := range body.List {
		waits := false
		ast.Inspect(st, func(n ast.Node) bool {
			if s, ok := n.(*ast.SelectorExpr); ok && (s.Sel.Name == "waitLoaded" || s.Sel.Name == "waitLoadedForever") {
				waits = true
			}
			return !waits
		})
		if waits {
			return true
		}
		if touchesIndex(&ast.BlockStmt{List: []ast.Stmt{st}}) {
			return false
		}
	}
	return false
}
