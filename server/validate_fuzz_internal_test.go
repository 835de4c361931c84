package server

import (
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// FuzzValidateRequest decodes arbitrary bytes as each request of the API
// and validates it: validation never panics, and a request it accepts
// holds only valid UTF-8 strings without NUL, none longer than the
// largest bound, in no list or map larger than the largest count.
func FuzzValidateRequest(f *testing.F) {
	reqs := []proto.Message{
		&tvv1.GetAccessTokenRequest{}, &tvv1.StartConnectRequest{}, &tvv1.GetConnectionRequest{},
		&tvv1.ListConnectionsRequest{}, &tvv1.RevokeConnectionRequest{}, &tvv1.ValidateConnectionRequest{},
		&tvv1.WatchEventsRequest{}, &tvv1.ListAuditEventsRequest{},
	}
	for i, m := range []proto.Message{
		&tvv1.GetAccessTokenRequest{ConnectionId: "conn_1", Credential: "user"},
		&tvv1.StartConnectRequest{Owner: "alice", Provider: "slack", Scopes: []string{"chat:write"}, Options: map[string]string{"team": "T1"}, Purpose: "notify\nus"},
		&tvv1.ListConnectionsRequest{Owner: "a", PageToken: "abc"},
		&tvv1.WatchEventsRequest{Types: []string{"connection.created"}},
	} {
		b, _ := proto.Marshal(m)
		f.Add(uint8(i), b)
	}
	maxLen, maxItems := 0, 0
	for _, b := range fieldBounds {
		maxLen, maxItems = max(maxLen, b.maxLen, b.maxKey), max(maxItems, b.maxItems)
	}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		m := reqs[int(which)%len(reqs)].ProtoReflect().New().Interface()
		if proto.Unmarshal(b, m) != nil {
			return
		}
		if validateRequest(m) != nil {
			return
		}
		var check func(protoreflect.Message)
		str := func(fd protoreflect.FieldDescriptor, s string) {
			if len(s) > maxLen || !utf8.ValidString(s) {
				t.Fatalf("accepted %s of %d bytes (valid UTF-8: %v)", fd.FullName(), len(s), utf8.ValidString(s))
			}
			for _, r := range s {
				if r == 0 {
					t.Fatalf("accepted %s holding NUL", fd.FullName())
				}
			}
		}
		check = func(m protoreflect.Message) {
			m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
				switch {
				case fd.IsList():
					if v.List().Len() > maxItems {
						t.Fatalf("accepted %s with %d elements", fd.FullName(), v.List().Len())
					}
					for i := range v.List().Len() {
						if fd.Kind() == protoreflect.StringKind {
							str(fd, v.List().Get(i).String())
						}
					}
				case fd.IsMap():
					if v.Map().Len() > maxItems {
						t.Fatalf("accepted %s with %d entries", fd.FullName(), v.Map().Len())
					}
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						str(fd, k.String())
						str(fd, mv.String())
						return true
					})
				case fd.Kind() == protoreflect.StringKind:
					str(fd, v.String())
				case fd.Kind() == protoreflect.MessageKind:
					check(v.Message())
				}
				return true
			})
		}
		check(m.ProtoReflect())
	})
}
