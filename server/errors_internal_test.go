package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokenvault/tokenvault/vault"
)

// TestToStatus_InternalTextNotReturned: an error the vocabulary does not
// name (a store failure, a bug) becomes INTERNAL "internal error": its text
// (paths, record keys, anything) never reaches a client.
func TestToStatus_InternalTextNotReturned(t *testing.T) {
	const inside = "bolt: apply conn/c_secret-record-key: /srv/data/tokenvault.db: input/output error"
	for _, err := range []error{
		errors.New(inside),
		fmt.Errorf("vault: refresh c_1: %w", errors.New(inside)),
		fmt.Errorf("vault: %s: %w", inside, vault.ErrConflict), // named: its own words, not the text
	} {
		st := status.Convert(toStatus(err))
		if strings.Contains(st.Message(), "secret-record-key") || strings.Contains(st.Message(), "/srv/data") {
			t.Errorf("toStatus(%q) = %q; want the internal text left out", err, st.Message())
		}
		for _, d := range st.Details() {
			if strings.Contains(fmt.Sprint(d), "secret-record-key") {
				t.Errorf("toStatus(%q) detail %v holds the internal text", err, d)
			}
		}
	}
	if st := status.Convert(toStatus(errors.New(inside))); st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Errorf("toStatus(unnamed error) = %v %q; want Internal \"internal error\"", st.Code(), st.Message())
	}
}
