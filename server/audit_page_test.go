package server_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// TestListAuditEvents_PagedBySize: records that would make a page of 1000
// larger than 1 MiB come in several pages, each under 1 MiB, and paging
// through them returns every record once.
func TestListAuditEvents_PagedBySize(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	const n = 1000
	for range n {
		e.audit.Record(audit.Record{Caller: "big", Role: "operator", Method: "/m", Outcome: "OK", Reason: strings.Repeat("r", 2000)})
	}
	seen, pages, token := map[string]bool{}, 0, ""
	for {
		resp, err := e.admin.ListAuditEvents(ctx, &tvv1.ListAuditEventsRequest{Caller: "big", PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		if size := proto.Size(resp); size > 1<<20+4096 {
			t.Errorf("page %d is %d bytes; want at most about 1 MiB", pages, size)
		}
		for _, ev := range resp.Events {
			if seen[ev.AuditId] {
				t.Fatalf("record %s listed twice", ev.AuditId)
			}
			seen[ev.AuditId] = true
		}
		if token = resp.NextPageToken; token == "" || pages > 10 {
			break
		}
	}
	if len(seen) != n || pages < 2 {
		t.Errorf("%d records in %d pages; want all %d in several", len(seen), pages, n)
	}
}
