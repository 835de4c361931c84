package client_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"google.golang.org/grpc/codes"

	"github.com/tokenvault/tokenvault/client"
	tokenvaultv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// dialExample starts an in-process stand-in for a sidecar serving fv and
// connects to it. A real program calls client.Dial("127.0.0.1:7070") or
// client.Dial("unix:///run/tokenvault.sock") instead.
func dialExample(fv *fakeVault) (c *client.Client, stop func()) {
	dialer, stopServer := serveFake(fv)
	c, err := client.Dial(bufTarget, client.WithDialOptions(dialer))
	if err != nil {
		log.Fatal(err)
	}
	return c, func() { c.Close(); stopServer() }
}

func ExampleClient_AccessToken() {
	c, stop := dialExample(newFakeVault())
	defer stop()

	tok, err := c.AccessToken(context.Background(), "conn_1", client.MinValid(10*time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	// Use tok.AccessToken against the provider; never log it.
	fmt.Println(tok.Provider, tok.TokenType, tok.Expiry.Format(time.RFC3339))
	fmt.Println("team:", tok.Metadata["team_id"], "missing scopes:", tok.MissingScopes)
	// Output:
	// slack Bearer 2031-01-02T03:04:05Z
	// team: T123 missing scopes: [users:read]
}

func ExampleClient_HTTPClient() {
	c, stop := dialExample(newFakeVault())
	defer stop()

	// A provider API that has already rejected the sidecar's current token
	// ("tok-1") and accepts only the next one.
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-2" {
			http.Error(w, `{"ok":false,"error":"invalid_auth"}`, http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, `{"ok":true,"echo":%s}`, body)
	}))
	defer api.Close()

	// The first attempt gets a 401; the client asks the sidecar for a forced
	// refresh and replays the request once with the new token.
	hc := c.HTTPClient("conn_1")
	resp, err := hc.Post(api.URL+"/api/chat.postMessage", "application/json; charset=utf-8",
		strings.NewReader(`{"channel":"C123","text":"hello"}`))
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.Status)
	fmt.Println(string(body))
	// Output:
	// 200 OK
	// {"ok":true,"echo":{"channel":"C123","text":"hello"}}
}

func ExampleClient_TokenSource() {
	c, stop := dialExample(newFakeVault())
	defer stop()

	// ReuseTokenSource keeps the token until it nears expiry; without it each
	// Token call asks the sidecar, which is cheap too.
	ts := oauth2.ReuseTokenSource(nil, c.TokenSource(context.Background(), "conn_1"))
	tok, err := ts.Token()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(tok.Type(), tok.Expiry.Format(time.RFC3339), tok.Extra("team_id"))
	// Output: Bearer 2031-01-02T03:04:05Z T123
}

func ExampleIsReauthRequired() {
	fv := newFakeVault()
	// The provider has rejected this connection's grant.
	fv.tokenErr = reasonErr(codes.FailedPrecondition, client.ReasonNeedsReauthorization, client.ErrorDomain)
	c, stop := dialExample(fv)
	defer stop()

	ctx := context.Background()
	_, err := c.AccessToken(ctx, "conn_1")
	switch {
	case client.IsReauthRequired(err):
		// Retrying is useless: send the user through the connect flow again.
		u, serr := c.StartConnect(ctx, &tokenvaultv1.StartConnectRequest{Owner: "u1", Provider: "slack"})
		if serr != nil {
			log.Fatal(serr)
		}
		fmt.Println("reason:", client.Reason(err))
		fmt.Println("reconnect at", u)
	case client.IsNotConnected(err):
		fmt.Println("no such connection")
	case client.IsUnavailable(err):
		fmt.Println("retry later")
	case err != nil:
		log.Fatal(err)
	}
	// Output:
	// reason: NEEDS_REAUTHORIZATION
	// reconnect at https://slack.com/oauth/v2/authorize?state=s&owner=u1
}

func ExampleClient_ListConnections() {
	fv := newFakeVault()
	fv.conns = testConnections(5)
	c, stop := dialExample(fv)
	defer stop()

	// The iterator fetches pages of 2 as the loop advances.
	filter := &tokenvaultv1.ListConnectionsRequest{Owner: "u1", PageSize: 2}
	var ids []string
	for conn, err := range c.ListConnections(context.Background(), filter) {
		if err != nil {
			log.Fatal(err)
		}
		ids = append(ids, conn.GetConnectionId())
	}
	fmt.Println(strings.Join(ids, " "))
	// Output: conn_0 conn_1 conn_2 conn_3 conn_4
}
