package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/tokenvault/tokenvault/providers"
	"github.com/tokenvault/tokenvault/server/connectpage"
)

// connectPageConfig builds the connect page's configuration: the
// application's name, logo and theme, the popup and frame origins, and each
// provider's presentation (display name, purpose, scopes in words, icon).
func connectPageConfig(cfg *Config, provs map[string]providers.Provider) (connectpage.Config, error) {
	cp := cfg.ConnectPage
	pc := connectpage.Config{
		AppName: cp.AppName, ThemeColor: cp.ThemeColor,
		PopupOrigins: cp.PopupOrigins, FrameAncestors: cp.FrameAncestors,
	}
	if cp.LogoFile != "" {
		b, t, err := readImage(cp.LogoFile)
		if err != nil {
			return pc, fmt.Errorf("connect_page.logo_file: %w", err)
		}
		pc.Logo, pc.LogoType = b, t
	}
	names := make([]string, 0, len(provs))
	for name := range provs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := provs[name]
		info := p.Info()
		conf := cfg.Providers[name]
		pp := connectpage.Provider{Name: name, DisplayName: info.DisplayName, Purpose: conf.Purpose, Color: conf.Color}
		for _, s := range info.DefaultScopes {
			pp.Scopes = append(pp.Scopes, connectpage.Scope{Name: s, Words: cmpOr(conf.ScopeWords[s], s)})
		}
		if conf.IconFile != "" {
			b, t, err := readImage(conf.IconFile)
			if err != nil {
				return pc, fmt.Errorf("provider %q: icon_file: %w", name, err)
			}
			pp.Icon, pp.IconType = b, t
		}
		pc.Providers = append(pc.Providers, pp)
		// The page's Connect form is redirected to the provider: its
		// authorization endpoint's origin goes into the CSP's form-action.
		if u, err := p.AuthURL(providers.AuthRequest{State: "x"}); err == nil {
			if pu, err := url.Parse(u); err == nil && pu.Host != "" {
				if o := pu.Scheme + "://" + pu.Host; !slices.Contains(pc.FormOrigins, o) {
					pc.FormOrigins = append(pc.FormOrigins, o)
				}
			}
		}
	}
	return pc, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readImage reads an SVG or PNG file for the page, by its extension.
func readImage(path string) ([]byte, string, error) {
	var t string
	switch strings.ToLower(filepath.Ext(path)) {
	case ".svg":
		t = "image/svg+xml"
	case ".png":
		t = "image/png"
	default:
		return nil, "", fmt.Errorf("%s: want an .svg or .png file", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	if len(b) > 256<<10 {
		return nil, "", fmt.Errorf("%s: larger than 256 KiB", path)
	}
	return b, t, nil
}

// devSandboxPage gives dev mode's built-in sandbox the words a configured
// provider would have (purpose, scopes in words), so that the connect page
// in dev mode shows what a real one does.
func devSandboxPage(pc *connectpage.Config) {
	words := map[string]string{"read": "See your sandbox data", "write": "Change your sandbox data"}
	for i := range pc.Providers {
		p := &pc.Providers[i]
		if p.Name != "sandbox" {
			continue
		}
		p.Purpose = cmpOr(p.Purpose, "A pretend service, built into dev mode, to try connecting without an account anywhere.")
		for j := range p.Scopes {
			if w, ok := words[p.Scopes[j].Name]; ok && p.Scopes[j].Words == p.Scopes[j].Name {
				p.Scopes[j].Words = w
			}
		}
	}
}
