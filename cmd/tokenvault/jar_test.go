package main

import (
	"net/http"
	"net/http/cookiejar"
	"testing"
)

// newBrowser is an end user's browser: it keeps cookies (the start URL a
// flow begins at binds the flow to the browser with one) and follows
// redirects.
func newBrowser(t testing.TB) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}
