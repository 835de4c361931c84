package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// opFlags are the flags every operator command shares.
type opFlags struct {
	addr, output, apiKeyFile string
	timeout                  time.Duration
	env                      func(string) string
}

func (o *opFlags) register(fs *flag.FlagSet, env func(string) string) {
	o.env = env
	fs.StringVar(&o.addr, "addr", cmp.Or(env("TOKENVAULT_ADDR"), "127.0.0.1:7070"), "sidecar gRPC address (host:port or unix:///path)")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "call timeout")
	fs.StringVar(&o.apiKeyFile, "api-key-file", "", "file holding the API key to present (default: $TOKENVAULT_API_KEY)")
}

// apiKey returns the key to present: from --api-key-file, else
// $TOKENVAULT_API_KEY; "" if neither (a unix-socket peer needs none).
func (o *opFlags) apiKey() (string, error) {
	if o.apiKeyFile != "" {
		b, err := os.ReadFile(o.apiKeyFile)
		if err != nil {
			return "", fmt.Errorf("API key: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	return strings.TrimSpace(o.env("TOKENVAULT_API_KEY")), nil
}

func (o *opFlags) dial() (*grpc.ClientConn, error) {
	target := o.addr
	if strings.HasPrefix(target, "unix://") {
		target = "unix:" + strings.TrimPrefix(target, "unix://")
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	key, err := o.apiKey()
	if err != nil {
		return nil, err
	}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearerKey(key)))
	} else {
		opts = append(opts, grpc.WithUnaryInterceptor(hintNoKey))
	}
	return grpc.NewClient(target, opts...)
}

// bearerKey sends an API key as "authorization: Bearer <key>" with every
// call. Over plaintext: the sidecar is on loopback or a unix socket.
type bearerKey string

func (k bearerKey) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(k)}, nil
}

func (bearerKey) RequireTransportSecurity() bool { return false }

// hintNoKey adds what to do to an Unauthenticated answer to a call made
// without a key.
func hintNoKey(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if status.Code(err) == codes.Unauthenticated {
		return fmt.Errorf("%w (no API key given: set $TOKENVAULT_API_KEY or --api-key-file)", err)
	}
	return err
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
		fmt.Fprintln(stdout, "usage: tokenvault connections list|get|revoke|validate|update|delete|delete-owner|import|exchange")
		return errUsage
	}
	switch args[0] {
	case "import", "exchange", "delete", "delete-owner", "update":
		return lifecycleCmd(ctx, args[0], args[1:], env, os.Stdin, stdout)
	}
	fs := flag.NewFlagSet("connections "+args[0], flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	var owner, tenant, provider, statusFlag, reason string
	switch args[0] {
	case "list":
		fs.StringVar(&owner, "owner", "", "only this owner's connections")
		fs.StringVar(&tenant, "tenant", "", "only this tenant's connections")
		fs.StringVar(&provider, "provider", "", "only this provider's connections")
		fs.StringVar(&statusFlag, "status", "", "only connections in this status: active, needs_reauth, revoked")
	case "revoke":
		fs.StringVar(&reason, "reason", "", "why, recorded with the revocation")
	case "get", "validate":
	default:
		return fmt.Errorf("unknown subcommand %q (want list, get, revoke, validate, update, delete, delete-owner, import or exchange)", args[0])
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
		req := &tvv1.ListConnectionsRequest{Owner: owner, Tenant: tenant, Provider: provider, Status: st, PageSize: 500}
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
		fmt.Fprintln(tw, "ID\tOWNER\tTENANT\tPROVIDER\tACCOUNT\tPURPOSE\tSTATUS\tREASON\tSCOPES\tMISSING SCOPES\tCREATED\tLAST REFRESHED\tLAST USED\tLAST VALIDATED\tEXPIRES")
		for _, c := range all.Connections {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				c.ConnectionId, c.Owner, dash(c.Tenant), c.Provider, dash(c.Account), dash(c.Purpose),
				statusName(c.Status), dash(c.StatusReason),
				dash(strings.Join(c.GrantedScopes, ",")), dash(strings.Join(c.MissingScopes, ",")),
				when(c.CreateTime), when(c.LastRefreshTime), when(c.LastUsedTime), when(c.LastValidatedTime), when(c.TokenExpireTime))
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
	case "validate":
		if len(pos) != 1 {
			return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
		}
		resp, err := api.ValidateConnection(ctx, &tvv1.ValidateConnectionRequest{ConnectionId: pos[0]})
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(stdout, resp)
		}
		if resp.Live {
			fmt.Fprintf(stdout, "live: %s (the provider accepts the grant)\n", pos[0])
		} else {
			fmt.Fprintf(stdout, "dead: %s is %s (%s); the user must connect again\n", pos[0], statusName(resp.Connection.GetStatus()), dash(resp.Connection.GetStatusReason()))
		}
		return nil
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

func dash(s string) string { return cmp.Or(s, "-") }

// when formats a timestamp for a table, in local time to the minute.
func when(t *timestamppb.Timestamp) string {
	if t == nil {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04")
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
	var sel tvv1.ConnectionSelector
	fs.StringVar(&sel.Owner, "owner", "", "the connection by its owner (with --provider) instead of CONNECTION_ID")
	fs.StringVar(&sel.Provider, "provider", "", "the connection's provider (with --owner)")
	fs.StringVar(&sel.Label, "label", "", "the connection's label, when the owner has several at the provider")
	fs.StringVar(&sel.Tenant, "tenant", "", "the connection's tenant")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	bySelector := sel.Owner != "" || sel.Provider != "" || sel.Label != "" || sel.Tenant != ""
	switch {
	case bySelector && len(pos) != 0:
		return errors.New("give CONNECTION_ID or --owner and --provider, not both")
	case !bySelector && len(pos) != 1:
		return fmt.Errorf("want one CONNECTION_ID (or --owner and --provider), got %d arguments", len(pos))
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	req := &tvv1.GetAccessTokenRequest{ForceRefresh: *force, Credential: *credential}
	if bySelector {
		req.Selector = &sel
	} else {
		req.ConnectionId = pos[0]
	}
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
	if len(args) == 0 || (args[0] != "rotate" && args[0] != "retire" && args[0] != "rekey") {
		fmt.Fprintln(stdout, "usage: tokenvault keys rotate|retire|rekey --new-master-key-file FILE")
		return errUsage
	}
	fs := flag.NewFlagSet("keys "+args[0], flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	var newKeyFile string
	if args[0] == "rekey" {
		fs.StringVar(&newKeyFile, "new-master-key-file", "", "file holding the new master key (default: $TOKENVAULT_NEW_MASTER_KEY)")
	}
	if _, err := parseInterspersed(fs, args[1:]); err != nil {
		return err
	}
	var newKey []byte
	if args[0] == "rekey" {
		var err error
		switch {
		case newKeyFile != "":
			if newKey, err = os.ReadFile(newKeyFile); err != nil {
				return fmt.Errorf("new master key: %w", err)
			}
		case env("TOKENVAULT_NEW_MASTER_KEY") != "":
			newKey = []byte(env("TOKENVAULT_NEW_MASTER_KEY"))
		default:
			return errors.New("rekey needs --new-master-key-file or $TOKENVAULT_NEW_MASTER_KEY")
		}
		defer clear(newKey)
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	admin := tvv1.NewAdminServiceClient(conn)
	var (
		out  map[string]any
		text string
	)
	switch args[0] {
	case "rotate":
		resp, err := admin.RotateKeys(ctx, &tvv1.RotateKeysRequest{})
		if err != nil {
			return err
		}
		out = map[string]any{"term": resp.Term, "rewrapped": resp.Rewrapped}
		text = fmt.Sprintf("key term %d; re-sealed %d records", resp.Term, resp.Rewrapped)
	case "retire":
		resp, err := admin.RetireKeys(ctx, &tvv1.RetireKeysRequest{})
		if err != nil {
			return err
		}
		out = map[string]any{"term": resp.Term, "retired_terms": resp.RetiredTerms}
		text = fmt.Sprintf("key term %d; retired terms %v", resp.Term, resp.RetiredTerms)
		if len(resp.RetiredTerms) == 0 {
			text = fmt.Sprintf("key term %d; no older term to retire", resp.Term)
		}
	case "rekey":
		resp, err := admin.RekeyMaster(ctx, &tvv1.RekeyMasterRequest{NewMasterKey: newKey})
		if err != nil {
			return err
		}
		out = map[string]any{"master_key_id": resp.MasterKeyId}
		text = fmt.Sprintf("the keyring is sealed by master key %s; restart every replica with it (the old key no longer opens the store)", resp.MasterKeyId)
	}
	if o.output == "json" {
		b, _ := json.Marshal(out)
		_, err = fmt.Fprintln(stdout, string(b))
		return err
	}
	_, err = fmt.Fprintln(stdout, text)
	return err
}

// recordsCmd lists the quarantined connection records of the running
// sidecar. It asks the sidecar rather than opening the store: a bbolt file
// is locked by the sidecar that serves it, and on etcd each replica finds
// the records it could not read itself.
func recordsCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "unreadable" {
		fmt.Fprintln(stdout, "usage: tokenvault records unreadable [-o json]")
		return errUsage
	}
	fs := flag.NewFlagSet("records unreadable", flag.ContinueOnError)
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
	resp, err := tvv1.NewAdminServiceClient(conn).ListUnreadableRecords(ctx, &tvv1.ListUnreadableRecordsRequest{})
	if err != nil {
		return err
	}
	if o.output == "json" {
		return printJSON(stdout, resp)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tCONNECTION\tREASON\tSINCE")
	for _, r := range resp.Records {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Key, r.ConnectionId, r.Reason, when(r.SinceTime))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if int(resp.Total) > len(resp.Records) {
		fmt.Fprintf(stdout, "(%d more not shown)\n", int(resp.Total)-len(resp.Records))
	}
	return nil
}
