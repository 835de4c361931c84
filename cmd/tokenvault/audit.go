package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// auditCmd lists audit records, newest first:
//
//	tokenvault audit [--connection ID] [--caller C] [--method M] [--limit N] [-o json]
func auditCmd(ctx context.Context, args []string, env func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	var o opFlags
	o.register(fs, env)
	connection := fs.String("connection", "", "only records of this connection")
	caller := fs.String("caller", "", "only records of this caller (API key name or uid:<n>)")
	method := fs.String("method", "", "only records of this method (full gRPC name, or http:callback)")
	limit := fs.Int("limit", 100, "at most this many records")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("audit takes no arguments, got %q", pos)
	}
	if *limit <= 0 {
		return fmt.Errorf("--limit must be positive")
	}
	conn, err := o.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	admin := tvv1.NewAdminServiceClient(conn)
	all := &tvv1.ListAuditEventsResponse{}
	req := &tvv1.ListAuditEventsRequest{ConnectionId: *connection, Caller: *caller, Method: *method}
	for len(all.Events) < *limit {
		req.PageSize = int32(min(*limit-len(all.Events), 1000))
		resp, err := admin.ListAuditEvents(ctx, req)
		if err != nil {
			return err
		}
		all.Events = append(all.Events, resp.Events...)
		if resp.NextPageToken == "" {
			break
		}
		req.PageToken = resp.NextPageToken
		all.NextPageToken = resp.NextPageToken
	}
	if len(all.Events) < *limit {
		all.NextPageToken = ""
	}
	if o.output == "json" {
		return printJSON(stdout, all)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tCALLER\tROLE\tMETHOD\tCONNECTION\tPROVIDER\tOUTCOME\tREASON")
	for _, ev := range all.Events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			ev.Time.AsTime().Local().Format("2006-01-02 15:04:05.000"), dash(ev.Caller), dash(ev.Role),
			strings.TrimPrefix(ev.Method, "/tokenvault.v1."), dash(ev.ConnectionId), dash(ev.Provider),
			ev.Outcome, dash(ev.Reason))
	}
	return tw.Flush()
}
