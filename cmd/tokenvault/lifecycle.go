package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"

	"google.golang.org/protobuf/encoding/protojson"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// importBatch is how many records one ImportConnections call carries (the
// server takes at most 1000).
const importBatch = 500

// maxImportLine bounds one line of an import file: a record with every
// credential and field at its limit fits well within it.
const maxImportLine = 256 << 10

// lifecycleCmd runs the connection lifecycle subcommands: import, exchange,
// delete, delete-owner and update.
func lifecycleCmd(ctx context.Context, sub string, args []string, env func(string) string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("connections "+sub, flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	var dryRun, verify bool
	var provider, reason string
	var set, remove stringList
	switch sub {
	case "import":
		fs.BoolVar(&dryRun, "dry-run", false, "validate and report every record, write nothing")
		fs.BoolVar(&verify, "verify", false, "ask the provider once per grant; dead grants are imported as needs_reauth")
	case "exchange":
		fs.StringVar(&provider, "provider", "", "the provider whose non-expiring tokens to exchange (slack)")
		fs.BoolVar(&dryRun, "dry-run", false, "report what would be exchanged, change nothing")
	case "delete", "delete-owner":
		fs.StringVar(&reason, "reason", "", "why, recorded with the deletion")
	case "update":
		fs.Var(&set, "set", "KEY=VALUE application metadata to set (repeatable)")
		fs.Var(&remove, "remove", "application metadata KEY to remove (repeatable)")
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	api := tvv1.NewTokenVaultServiceClient(conn)
	admin := tvv1.NewAdminServiceClient(conn)
	callCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, o.timeout) }

	switch sub {
	case "import":
		if len(pos) != 1 {
			return errors.New("want one FILE (JSON Lines; - for standard input)")
		}
		in := stdin
		if pos[0] != "-" {
			f, err := os.Open(pos[0])
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		return importFile(ctx, in, stdout, o, func(ctx context.Context, req *tvv1.ImportConnectionsRequest) (*tvv1.ImportConnectionsResponse, error) {
			req.DryRun, req.Verify = dryRun, verify
			ctx, cancel := context.WithTimeout(ctx, o.timeout)
			defer cancel()
			return admin.ImportConnections(ctx, req)
		})
	case "exchange":
		if provider == "" || len(pos) != 0 {
			return errors.New("want --provider NAME and no arguments")
		}
		ctx, cancel := callCtx()
		defer cancel()
		resp, err := admin.ExchangeLegacyTokens(ctx, &tvv1.ExchangeLegacyTokensRequest{Provider: provider, DryRun: dryRun})
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(stdout, resp)
		}
		counts := map[string]int{}
		for _, r := range resp.Results {
			counts[r.Outcome]++
			fmt.Fprintf(stdout, "%s: %s", r.ConnectionId, r.Outcome)
			if r.Reason != "" {
				fmt.Fprintf(stdout, " (%s)", r.Reason)
			}
			fmt.Fprintln(stdout)
		}
		fmt.Fprintf(stdout, "%d exchanged, %d would be exchanged, %d skipped, %d failed\n",
			counts["exchanged"], counts["would_exchange"], counts["skipped"], counts["failed"])
		if counts["failed"] > 0 {
			return fmt.Errorf("%d connections could not be exchanged", counts["failed"])
		}
		return nil
	case "delete":
		if len(pos) != 1 {
			return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
		}
		ctx, cancel := callCtx()
		defer cancel()
		resp, err := api.DeleteConnection(ctx, &tvv1.DeleteConnectionRequest{ConnectionId: pos[0], Reason: reason})
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(stdout, resp)
		}
		fmt.Fprintf(stdout, "deleted %s", pos[0])
		if !resp.ProviderRevoked {
			fmt.Fprintf(stdout, " (revocation at the provider failed: %s)", resp.ProviderError)
		}
		fmt.Fprintln(stdout)
		return nil
	case "delete-owner":
		if len(pos) != 1 {
			return fmt.Errorf("want one OWNER, got %d arguments", len(pos))
		}
		ctx, cancel := callCtx()
		defer cancel()
		resp, err := api.DeleteOwner(ctx, &tvv1.DeleteOwnerRequest{Owner: pos[0], Reason: reason})
		if err != nil {
			return err
		}
		if o.output == "json" {
			return printJSON(stdout, resp)
		}
		for _, id := range resp.ConnectionIds {
			fmt.Fprintf(stdout, "deleted %s\n", id)
		}
		fmt.Fprintf(stdout, "%d connections deleted", len(resp.ConnectionIds))
		if resp.ProviderFailures > 0 {
			fmt.Fprintf(stdout, " (%d could not be revoked at the provider)", resp.ProviderFailures)
		}
		fmt.Fprintln(stdout)
		return nil
	default: // update
		if len(pos) != 1 {
			return fmt.Errorf("want one CONNECTION_ID, got %d arguments", len(pos))
		}
		req := &tvv1.UpdateConnectionRequest{ConnectionId: pos[0], SetAppMetadata: map[string]string{}, RemoveAppMetadata: remove}
		for _, kv := range set {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("--set %q: want KEY=VALUE", kv)
			}
			req.SetAppMetadata[k] = v
		}
		ctx, cancel := callCtx()
		defer cancel()
		resp, err := api.UpdateConnection(ctx, req)
		if err != nil {
			return err
		}
		return printJSON(stdout, resp.Connection)
	}
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// importLine is one line of an import file, as the report shows it.
type importLine struct {
	n      int
	record *tvv1.ImportedConnection
}

// importFile reads JSON Lines from in, one tvv1.ImportedConnection a line,
// sends them in batches and prints one result per line. A line that does
// not parse is reported (without its content: it may hold tokens) and the
// rest of the file goes on. It returns an error if any line was refused.
func importFile(ctx context.Context, in io.Reader, stdout io.Writer, o opFlags, call func(context.Context, *tvv1.ImportConnectionsRequest) (*tvv1.ImportConnectionsResponse, error)) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), maxImportLine)
	counts := map[string]int{}
	// Reports are printed in line order at each flush: a refused line is
	// reported with the batch around it.
	type reportLine struct {
		n                   int
		outcome, id, reason string
	}
	var queued []reportLine
	queue := func(n int, outcome, id, reason string) {
		queued = append(queued, reportLine{n, outcome, id, reason})
	}
	report := func(n int, outcome, id, reason string) {
		counts[outcome]++
		if o.output == "json" {
			fmt.Fprintf(stdout, "{\"line\":%d,\"outcome\":%q,\"connection_id\":%q,\"reason\":%q}\n", n, outcome, id, reason)
			return
		}
		fmt.Fprintf(stdout, "line %d: %s", n, outcome)
		if id != "" {
			fmt.Fprintf(stdout, " %s", id)
		}
		if reason != "" {
			fmt.Fprintf(stdout, " (%s)", reason)
		}
		fmt.Fprintln(stdout)
	}
	var batch []importLine
	flush := func() error {
		defer func() {
			slices.SortFunc(queued, func(a, b reportLine) int { return a.n - b.n })
			for _, q := range queued {
				report(q.n, q.outcome, q.id, q.reason)
			}
			queued = queued[:0]
		}()
		if len(batch) == 0 {
			return nil
		}
		req := &tvv1.ImportConnectionsRequest{}
		for _, l := range batch {
			req.Connections = append(req.Connections, l.record)
		}
		resp, err := call(ctx, req)
		if err != nil {
			return fmt.Errorf("lines %d-%d: %w", batch[0].n, batch[len(batch)-1].n, err)
		}
		for _, r := range resp.Results {
			if int(r.Index) >= len(batch) || r.Index < 0 {
				return fmt.Errorf("the sidecar answered for record %d of a batch of %d", r.Index, len(batch))
			}
			queue(batch[r.Index].n, importOutcomeName(r.Outcome), r.ConnectionId, r.Reason)
		}
		batch = batch[:0]
		return nil
	}
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		rec := &tvv1.ImportedConnection{}
		if err := protojson.Unmarshal([]byte(line), rec); err != nil {
			queue(n, "refused", "", importParseError(err))
			continue
		}
		batch = append(batch, importLine{n: n, record: rec})
		if len(batch) == importBatch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("line %d: longer than %d bytes", n+1, maxImportLine)
		}
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	if o.output != "json" {
		fmt.Fprintf(stdout, "%d imported, %d valid (dry run), %d duplicates, %d refused\n",
			counts["imported"], counts["valid"], counts["duplicate"], counts["refused"])
	}
	if counts["refused"] > 0 {
		return fmt.Errorf("%d records refused", counts["refused"])
	}
	return nil
}

func importOutcomeName(o tvv1.ImportOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "IMPORT_OUTCOME_"))
}

// unknownField finds the field name in protojson's unknown-field error.
var unknownField = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`unknown field "([A-Za-z0-9_]{1,64})"`) })

// importParseError says why a line is not a record without quoting the
// line: protojson's messages can quote the offending value, which may be a
// token.
func importParseError(err error) string {
	if m := unknownField().FindStringSubmatch(err.Error()); m != nil {
		return fmt.Sprintf("unknown field %q", m[1])
	}
	return "malformed JSON, or a field of the wrong type"
}
