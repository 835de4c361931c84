package vault

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"strings"
	"testing"
)

// TestVault_EntriesChangeThroughTheIndex: v.entries gains and loses
// entries only in addEntry and removeEntry, which keep the owner index
// (Lookup) true. A connection added or deleted elsewhere would be missing
// from Lookup, or found there after it is gone.
func TestVault_EntriesChangeThroughTheIndex(t *testing.T) {
	fset, funcs := packageFuncs(t)
	for _, fn := range funcs {
		if fn.Body == nil || fn.Name.Name == "addEntry" || fn.Name.Name == "removeEntry" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.AssignStmt:
				for _, lhs := range n.Lhs {
					if ix, ok := lhs.(*ast.IndexExpr); ok && isEntries(ix.X) {
						t.Errorf("%s: %s sets v.entries[...]: call addEntry, which keeps the owner index", fset.Position(n.Pos()), fn.Name.Name)
					}
				}
			case *ast.CallExpr:
				if id, ok := n.Fun.(*ast.Ident); ok && id.Name == "delete" && len(n.Args) > 0 && isEntries(n.Args[0]) {
					t.Errorf("%s: %s deletes from v.entries: call removeEntry, which keeps the owner index", fset.Position(n.Pos()), fn.Name.Name)
				}
			}
			return true
		})
	}
}

func isEntries(x ast.Expr) bool {
	s, ok := x.(*ast.SelectorExpr)
	return ok && s.Sel.Name == "entries"
}

// packageFuncs parses the package's own (non-test) files and returns their
// function declarations, for the tests that check a rule over all of them.
func packageFuncs(t *testing.T) (*token.FileSet, []*ast.FuncDecl) {
	t.Helper()
	files, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var funcs []*ast.FuncDecl
	for _, f := range files {
		name := f.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range file.Decls {
			if fn, ok := d.(*ast.FuncDecl); ok {
				funcs = append(funcs, fn)
			}
		}
	}
	return fset, funcs
}

// TestVault_RemoveEntry_LeavesTheIndex: a removed connection is gone from
// Lookup, and its owner's other connections stay.
func TestVault_RemoveEntry_LeavesTheIndex(t *testing.T) {
	v := &Vault{entries: map[string]*entry{}, byOwner: map[ownerKey][]*entry{}}
	v.loadState.ready.Store(true)
	for _, c := range []*Connection{
		{ID: "conn_a", Owner: "alice", Provider: "slack", Label: "work"},
		{ID: "conn_b", Owner: "alice", Provider: "slack", Label: "home"},
	} {
		e := newEntry(c)
		e.res.Store(newResident(c))
		v.addEntry(e)
	}
	if _, err := v.Lookup(context.Background(), Selector{Owner: "alice", Provider: "slack"}); err == nil {
		t.Fatal("two connections, no label: Lookup picked one")
	}
	v.removeEntry("conn_a")
	if id, err := v.Lookup(context.Background(), Selector{Owner: "alice", Provider: "slack"}); err != nil || id != "conn_b" {
		t.Errorf("after removing conn_a, Lookup = %q, %v; want conn_b", id, err)
	}
	v.removeEntry("conn_b")
	if _, ok := v.byOwner[ownerKey{"alice", "slack"}]; ok || len(v.entries) != 0 {
		t.Errorf("after removing both, index %v, entries %v; want both empty", v.byOwner, v.entries)
	}
}
