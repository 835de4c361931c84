package connectpage

import (
	"regexp"
	"strings"
	"testing"
)

func TestParseTheme_ContrastAA(t *testing.T) {
	for _, c := range []string{"", "#2456c7", "#ffffff", "#000000", "#ffd500", "#777777", "#4a154b", "#0f0", "#e01e5a", "#f4f5f7"} {
		th, err := ParseTheme(c)
		if err != nil {
			t.Fatalf("ParseTheme(%q): %v", c, err)
		}
		if r := Contrast(th.Accent, th.OnAccent); r < 4.5 {
			t.Errorf("ParseTheme(%q): button text %s on %s = %.2f:1; want >= 4.5", c, th.OnAccent, th.Accent, r)
		}
		for _, bg := range []string{Background, Surface} {
			if r := Contrast(th.AccentText, bg); r < 4.5 {
				t.Errorf("ParseTheme(%q): accent text %s on %s = %.2f:1; want >= 4.5", c, th.AccentText, bg, r)
			}
		}
	}
	for _, bad := range []string{"blue", "#12345", "#gggggg", "2456c7"} {
		if _, err := ParseTheme(bad); err == nil {
			t.Errorf("ParseTheme(%q) succeeded; want an error", bad)
		}
	}
}

// TestCSS_ContrastAA checks every text colour the stylesheet draws against
// every background it draws it on, and that the stylesheet uses no colour
// outside this table.
func TestCSS_ContrastAA(t *testing.T) {
	pairs := []struct {
		fg, bg string
		min    float64
	}{
		{Text, Background, 4.5}, {Text, Surface, 4.5}, {Text, "#eceef1", 4.5},
		{Muted, Background, 4.5}, {Muted, Surface, 4.5},
		{Success, "#edf7ef", 4.5}, {Warning, "#fdf4e7", 4.5}, {Danger, "#fbeaea", 4.5},
		{Border, Background, 3}, {Border, Surface, 3},
	}
	used := map[string]bool{"#d5d9de": true} // decorative separators, not control edges
	for _, p := range pairs {
		if r := Contrast(p.fg, p.bg); r < p.min {
			t.Errorf("%s on %s = %.2f:1; want >= %.1f", p.fg, p.bg, r, p.min)
		}
		used[p.fg], used[p.bg] = true, true
	}
	css, err := assets.ReadFile("assets/connect.css")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range regexp.MustCompile(`#[0-9a-fA-F]{6}\b`).FindAllString(string(css), -1) {
		if !used[strings.ToLower(c)] {
			t.Errorf("connect.css uses %s, which no contrast check covers", c)
		}
	}
}
