// Command tokenvault-notices writes the licence notices of a Go binary: the
// licence files of every module it links, as recorded in its build
// information, and of the Go distribution itself. The image build runs it
// on the binary it ships:
//
//	tokenvault-notices /out/tokenvault > /out/NOTICES
//
// Modules are located with `go mod download -json`, which reads the module
// cache (and fetches a module missing from it), so it needs the go command
// and the modules the binary was built from. A module without a licence
// file is an error: the binary must not ship without its notices.
package main

import (
	"bytes"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tokenvault-notices BINARY > NOTICES")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "tokenvault-notices: %v\n", err)
		os.Exit(1)
	}
}

// run writes the notices of the binary at path to w.
func run(path string, w io.Writer) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "Notices for %s %s, built with %s.\n", bi.Main.Path, bi.Main.Version, bi.GoVersion)
	fmt.Fprintf(&b, "It links the Go standard library and the modules below; each one's licence follows.\n")
	goroot, err := goEnv("GOROOT")
	if err != nil {
		return err
	}
	goLicence, err := os.ReadFile(filepath.Join(goroot, "LICENSE"))
	if err != nil {
		return fmt.Errorf("the Go distribution's licence: %w", err)
	}
	section(&b, "Go "+bi.GoVersion+" (the standard library and runtime)", [][2]string{{"LICENSE", string(goLicence)}})
	deps := slices.Clone(bi.Deps)
	slices.SortFunc(deps, func(a, b *debug.Module) int { return strings.Compare(a.Path, b.Path) })
	for _, d := range deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		files, err := licenceFiles(m)
		if err != nil {
			return fmt.Errorf("%s@%s: %w", m.Path, m.Version, err)
		}
		section(&b, m.Path+" "+m.Version, files)
	}
	_, err = w.Write(b.Bytes())
	return err
}

func section(b *bytes.Buffer, title string, files [][2]string) {
	fmt.Fprintf(b, "\n%s\n== %s\n%s\n", strings.Repeat("=", 78), title, strings.Repeat("=", 78))
	for _, f := range files {
		fmt.Fprintf(b, "\n-- %s --\n\n%s\n", f[0], strings.TrimRight(f[1], "\n"))
	}
}

// licenceFiles returns the names and texts of m's licence and notice
// files, found at its module root.
func licenceFiles(m *debug.Module) ([][2]string, error) {
	dir := m.Path // a replacement by a directory
	if m.Version != "" {
		out, err := exec.Command("go", "mod", "download", "-json", m.Path+"@"+m.Version).Output()
		if err != nil {
			return nil, fmt.Errorf("go mod download: %w", err)
		}
		var dl struct{ Dir, Error string }
		if err := json.Unmarshal(out, &dl); err != nil {
			return nil, err
		}
		if dl.Error != "" {
			return nil, errors.New(dl.Error)
		}
		dir = dl.Dir
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files [][2]string
	for _, e := range entries {
		if e.IsDir() || !isLicence(e.Name()) {
			continue
		}
		text, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		files = append(files, [2]string{e.Name(), string(text)})
	}
	if len(files) == 0 {
		return nil, errors.New("no LICENSE, COPYING or NOTICE file at the module root")
	}
	return files, nil
}

// isLicence reports whether a file name is a licence or notice file:
// LICENSE, LICENCE, COPYING, NOTICE, with any suffix (LICENSE.md,
// LICENSE-APACHE).
func isLicence(name string) bool {
	if strings.HasSuffix(name, ".go") {
		return false // licenses.go is code
	}
	n := strings.ToUpper(name)
	for _, p := range []string{"LICENSE", "LICENCE", "COPYING", "NOTICE"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

func goEnv(key string) (string, error) {
	out, err := exec.Command("go", "env", key).Output()
	if err != nil {
		return "", fmt.Errorf("go env %s: %w", key, err)
	}
	return strings.TrimSpace(string(out)), nil
}
