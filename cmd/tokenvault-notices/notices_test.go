package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestImageBinary builds the image's binary with `make image-binary`, the
// target the Dockerfile uses, and checks what the image relies on: it is
// statically linked (a scratch image has no dynamic loader and no libc),
// built without cgo and without build paths, prints the stamped version,
// and has licence notices for everything it links.
func TestImageBinary(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is needed to build the image binary as the Dockerfile does")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "tokenvault")
	const stamp = "v9.9.9-imagetest"
	mk := exec.CommandContext(ctx, "make", "-s", "-C", filepath.Join("..", ".."), "image-binary", "IMAGE_OUT="+bin, "VERSION="+stamp)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image-binary: %v\n%s", err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the image binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the image binary needs shared libraries %v", libs)
	}

	bi, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	// (-trimpath leaves -ldflags out of the build information: the
	// version command below shows the stamp.)
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("build settings CGO_ENABLED=%q -trimpath=%q; want 0 and true", settings["CGO_ENABLED"], settings["-trimpath"])
	}

	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil || !strings.HasPrefix(string(out), "tokenvault "+stamp+" go") {
		t.Errorf("%s version = %q, %v; want tokenvault %s ...", bin, out, err, stamp)
	}

	var notices bytes.Buffer
	if err := run(bin, &notices); err != nil {
		t.Fatalf("notices: %v", err)
	}
	n := notices.String()
	if !strings.Contains(n, "== Go "+bi.GoVersion) || !strings.Contains(n, "Redistribution and use in source and binary forms") {
		t.Error("the notices lack the Go distribution's licence")
	}
	for _, d := range bi.Deps {
		m := d
		if d.Replace != nil {
			m = d.Replace
		}
		if !strings.Contains(n, "\n== "+m.Path+" "+m.Version+"\n") {
			t.Errorf("the notices lack %s %s", m.Path, m.Version)
		}
	}
	if !strings.Contains(n, "Apache License") {
		t.Error("the notices hold no Apache licence text; grpc is Apache-2.0")
	}
}

func TestIsLicence(t *testing.T) {
	for name, want := range map[string]bool{
		"LICENSE": true, "LICENSE.md": true, "license.txt": true, "LICENCE": true, "COPYING": true,
		"NOTICE": true, "LICENSE-APACHE": true, "README.md": false, "go.mod": false, "licenses.go": false,
	} {
		if got := isLicence(name); got != want {
			t.Errorf("isLicence(%q) = %v; want %v", name, got, want)
		}
	}
}
