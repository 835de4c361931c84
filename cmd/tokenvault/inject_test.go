package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// tokenvault inject says what it needs before it listens. (Its webhook is
// tested in internal/inject, and as the API server calls it in the deploy
// module.)
func TestInjectCmd_Flags(t *testing.T) {
	env := func(string) string { return "" }
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"inject"}, 1, "--tls-cert-file and --tls-key-file are required"},
		{[]string{"inject", "--tls-cert-file", "c", "--tls-key-file", "k"}, 1, "--image is required"},
		{[]string{"inject", "--tls-cert-file", "/nonexistent/c", "--tls-key-file", "/nonexistent/k", "--image", "i"}, 1, "TLS certificate"},
		{[]string{"inject", "extra"}, 2, "inject takes no arguments"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Main(context.Background(), tc.args, env, &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}
