package main

import (
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// opFlags are the flags every operator command shares.
type opFlags struct {
	addr, output string
	timeout      time.Duration
}

func (o *opFlags) register(fs *flag.FlagSet, env func(string) string) {
	fs.StringVar(&o.addr, "addr", cmp.Or(env("TOKENVAULT_ADDR"), "127.0.0.1:7070"), "sidecar gRPC address (host:port or unix:///path)")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "call timeout")
}

func (o *opFlags) dial() (*grpc.ClientConn, error) {
	target := o.addr
	if strings.HasPrefix(target, "unix://") {
		target = "unix:" + strings.TrimPrefix(target, "unix://")
	}
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
}

// parseInterspersed parses flags that may come before or after positional
// arguments ("revoke ID --reason x" and "revoke --reason x ID").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func connectionsCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stdout, "usage: tokenvault connections list|get|revoke")
		return errUsage
	}
	fs := flag.NewFlagSet("connections "+args[0], flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	var owner, provider, statusFlag, reason string
	switch args[0] {
	case "list":
		fs.StringVar(&owner, "owner", "", "only this owner's connections")
		fs.StringVar(&provider, "provider", "", "only this provider's connections")
		fs.StringVar(&statusFlag, "status", "", "only connections in this status: active, needs_reauth, revoked")
	case "revoke":
		fs.StringVar(&reason, "reason", "", "why, recorded with the revocation")
	case "get":
	default:
		return fmt.Errorf("unknown subcommand %q (want list, get or revoke)", args[0])
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	api := tvv1.NewTokenVaultServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	switch args[0] {
	case "list":
		st := tvv1.ConnectionStatus_CONNECTION_STATUS_UNSPECIFIED
		if statusFlag != "" {
			v, ok := tvv1.ConnectionStatus_value["CONNECTION_STATUS_"+strings.ToUpper(statusFlag)]
			if !ok {
				return fmt.Errorf("unknown status %q", statusFlag)
			}
			st = tvv1.ConnectionStatus(v)
		}
		all := &tvv1.ListConnectionsResponse{}
		req := &tvv1.ListConnectionsRequest{Owner: owner, Provider: provider, Status: st, PageSize: 500}
		for {
			resp, err := api.ListConnections(ctx, req)
			if err != nil {
				return err
			}
			all.Connections = append(all.Connections, resp.Connections...)
			if resp.NextPageToken == "" {
				break
			}
			req.PageToken = resp.NextPageToken
		}
		if o.output == "json" {
			return printJSON(stdout, all)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tOWNER\tPROVIDER\tACCOUNT\tSTATUS\tREASON\tEXPIRES\tMISSING SCOPES")
		for _, c := range all.Connections {
			exp := "-"
			if c.TokenExpireTime != nil {
				exp = c.TokenExpireTime.AsTime().Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", c.ConnectionId, c.Owner, c.Provider, c.Account,
				statusName(c.Status), cmp.Or(c.StatusReason, "-"), exp, cmp.Or(strings.Join(c.MissingScopes, ","), "-"))
		}
		return tw.Flush()
	case "get":
		if len(pos) != 1 {
			return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
		}
		resp, err := api.GetConnection(ctx, &tvv1.GetConnectionRequest{ConnectionId: pos[0]})
		if err != nil {
			return err
		}
		return printJSON(stdout, resp.Connection)
	default: // revoke
		if len(pos) != 1 {
			return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
		}
		resp, err := api.RevokeConnection(ctx, &tvv1.RevokeConnectionRequest{ConnectionId: pos[0], Reason: reason})
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(stdout, resp)
		}
		fmt.Fprintf(stdout, "revoked %s", pos[0])
		if !resp.ProviderRevoked {
			fmt.Fprintf(stdout, " (locally; revocation at the provider failed: %s)", resp.ProviderError)
		}
		fmt.Fprintln(stdout)
		return nil
	}
}

func statusName(s tvv1.ConnectionStatus) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "CONNECTION_STATUS_"))
}

func tokenCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("token", flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	minValid := fs.Duration("min-valid", 0, "the token stays valid at least this long (default: the sidecar's)")
	force := fs.Bool("force", false, "refresh at the provider even if the stored token is valid")
	credential := fs.String("credential", "", "which credential (Slack: \"user\")")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req := &tvv1.GetAccessTokenRequest{ConnectionId: pos[0], ForceRefresh: *force, Credential: *credential}
	if *minValid > 0 {
		req.MinValidFor = durationpb.New(*minValid)
	}
	resp, err := tvv1.NewTokenVaultServiceClient(conn).GetAccessToken(ctx, req)
	if err != nil {
		return err
	}
	if o.output == "json" {
		return printJSON(stdout, resp)
	}
	_, err = fmt.Fprintln(stdout, resp.AccessToken)
	return err
}

func keysCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "rotate" {
		fmt.Fprintln(stdout, "usage: tokenvault keys rotate")
		return errUsage
	}
	fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	if _, err := parseInterspersed(fs, args[1:]); err != nil {
		return err
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	resp, err := tvv1.NewAdminServiceClient(conn).RotateKeys(ctx, &tvv1.RotateKeysRequest{})
	if err != nil {
		return err
	}
	if o.output == "json" {
		b, _ := json.Marshal(map[string]any{"term": resp.Term, "rewrapped": resp.Rewrapped})
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	_, err = fmt.Fprintf(stdout, "key term %d; re-sealed %d records\n", resp.Term, resp.Rewrapped)
	return err
}
