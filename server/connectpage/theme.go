package connectpage

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Theme is the page's colours, derived from one configured theme colour so
// that every pair the page draws meets WCAG 2.x AA contrast (4.5:1 for
// text, 3:1 for the focus ring and borders) whatever the operator picks.
type Theme struct {
	// Accent fills primary buttons; OnAccent is their text (white or
	// black, whichever contrasts more with Accent: at least 4.58:1).
	Accent, OnAccent string
	// AccentText is Accent darkened until it reaches 4.5:1 on the page's
	// white background: links, the focus ring, the connected badge.
	AccentText string
}

// Page colours that do not depend on the theme. Each text colour reaches
// 4.5:1 on Background and on Surface (theme_test.go checks every pair).
const (
	Background = "#ffffff"
	Surface    = "#f4f5f7"
	Text       = "#1b1f24"
	Muted      = "#4a5360"
	Danger     = "#a4161a"
	Warning    = "#8a4b00"
	Success    = "#1e6b34"
	Border     = "#767f8a" // 3:1 on Background and Surface: control edges
)

// DefaultThemeColor is used when none is configured.
const DefaultThemeColor = "#2456c7"

// ParseTheme derives a Theme from a #rrggbb (or #rgb) colour.
func ParseTheme(color string) (Theme, error) {
	if color == "" {
		color = DefaultThemeColor
	}
	rgb, err := parseHex(color)
	if err != nil {
		return Theme{}, err
	}
	t := Theme{Accent: hexColor(rgb), OnAccent: onColor(rgb)}
	// Darken in small steps until the accent reads as text on the page's
	// darker background (Surface), hence on white too.
	c := rgb
	surface, _ := parseHex(Surface)
	for contrast(c, surface) < 4.6 {
		for i := range c {
			c[i] = math.Floor(c[i] * 0.92)
		}
	}
	t.AccentText = hexColor(c)
	return t, nil
}

// Contrast returns the WCAG contrast ratio of two #rrggbb colours (1 to
// 21), or 0 if either does not parse.
func Contrast(a, b string) float64 {
	x, err1 := parseHex(a)
	y, err2 := parseHex(b)
	if err1 != nil || err2 != nil {
		return 0
	}
	return contrast(x, y)
}

func parseHex(s string) ([3]float64, error) {
	h, ok := strings.CutPrefix(s, "#")
	if ok && len(h) == 3 {
		h = string([]byte{h[0], h[0], h[1], h[1], h[2], h[2]})
	}
	if !ok || len(h) != 6 {
		return [3]float64{}, fmt.Errorf("colour %q: want #rrggbb", s)
	}
	n, err := strconv.ParseUint(h, 16, 32)
	if err != nil {
		return [3]float64{}, fmt.Errorf("colour %q: want #rrggbb", s)
	}
	return [3]float64{float64(n >> 16 & 0xff), float64(n >> 8 & 0xff), float64(n & 0xff)}, nil
}

func hexColor(c [3]float64) string {
	return fmt.Sprintf("#%02x%02x%02x", int(c[0]), int(c[1]), int(c[2]))
}

// luminance is WCAG 2.x relative luminance.
func luminance(c [3]float64) float64 {
	var l [3]float64
	for i, v := range c {
		v /= 255
		if v <= 0.04045 {
			l[i] = v / 12.92
		} else {
			l[i] = math.Pow((v+0.055)/1.055, 2.4)
		}
	}
	return 0.2126*l[0] + 0.7152*l[1] + 0.0722*l[2]
}

func contrast(a, b [3]float64) float64 {
	la, lb := luminance(a), luminance(b)
	if la < lb {
		la, lb = lb, la
	}
	return (la + 0.05) / (lb + 0.05)
}

// onColor is white or black, whichever contrasts more with c: one of them
// always reaches 4.58:1.
func onColor(c [3]float64) string {
	if contrast(c, [3]float64{}) > contrast(c, [3]float64{255, 255, 255}) {
		return "#000000"
	}
	return "#ffffff"
}
