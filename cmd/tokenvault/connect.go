package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// connectCmd starts a connect flow for OWNER at PROVIDER and prints its
// URL (the sidecar's start URL, which binds the flow to the browser that
// opens it) as is, one line, to open in a browser (grpcurl's JSON escapes
// each & as \u0026, which a browser does not undo).
func connectCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	scopes := fs.String("scopes", "", "comma-separated scopes (default: the provider's)")
	returnTo := fs.String("return-to", "", "where the browser goes once connected (must be on the allowlist)")
	label := fs.String("label", "", "a label, to tell several connections of one owner at one provider apart")
	tenant := fs.String("tenant", "", "the owner's tenant or organization")
	purpose := fs.String("purpose", "", "why the application asks, kept with the connection")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("want OWNER PROVIDER, got %d arguments", len(pos))
	}
	req := &tvv1.StartConnectRequest{Owner: pos[0], Provider: pos[1], ReturnTo: *returnTo,
		Label: *label, Tenant: *tenant, Purpose: *purpose}
	for _, s := range strings.Split(*scopes, ",") {
		if s = strings.TrimSpace(s); s != "" {
			req.Scopes = append(req.Scopes, s)
		}
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	resp, err := tvv1.NewTokenVaultServiceClient(conn).StartConnect(ctx, req)
	if err != nil {
		return err
	}
	if o.output == "json" {
		return printJSON(stdout, resp)
	}
	_, err = fmt.Fprintln(stdout, resp.AuthorizationUrl)
	return err
}
