package server_test

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// rpc is one method of tokenvault's services.
type rpc struct {
	name   string // "/pkg.Service/Method"
	in     protoreflect.MessageDescriptor
	stream bool
}

func tokenvaultRPCs(t *testing.T) []rpc {
	t.Helper()
	var out []rpc
	svcs := tvv1.File_tokenvault_v1_tokenvault_proto.Services()
	for i := range svcs.Len() {
		ms := svcs.Get(i).Methods()
		for j := range ms.Len() {
			m := ms.Get(j)
			out = append(out, rpc{"/" + string(svcs.Get(i).FullName()) + "/" + string(m.Name()), m.Input(), m.IsStreamingServer()})
		}
	}
	if len(out) < 10 {
		t.Fatalf("found %d methods; want every method of TokenVaultService and AdminService", len(out))
	}
	return out
}

// needsBound reports whether a field can carry an unbounded amount.
func needsBound(fd protoreflect.FieldDescriptor) bool {
	return fd.IsList() || fd.IsMap() || fd.Kind() == protoreflect.StringKind ||
		fd.Kind() == protoreflect.BytesKind || fd.Kind() == protoreflect.MessageKind
}

// TestValidate_EveryFieldHasABound: every field of every request that can
// carry an unbounded amount has a row in the validation table, and every
// row names such a field.
func TestValidate_EveryFieldHasABound(t *testing.T) {
	seen := map[protoreflect.FullName]bool{}
	var walk func(r rpc, md protoreflect.MessageDescriptor)
	walk = func(r rpc, md protoreflect.MessageDescriptor) {
		fs := md.Fields()
		for i := range fs.Len() {
			fd := fs.Get(i)
			if !needsBound(fd) {
				continue
			}
			seen[fd.FullName()] = true
			b, ok := server.BoundOf(fd.FullName())
			if !ok {
				t.Errorf("%s (%s) has no row in the validation table", fd.FullName(), r.name)
			}
			if b.Nested {
				walk(r, fd.Message())
			}
		}
	}
	for _, r := range tokenvaultRPCs(t) {
		walk(r, r.in)
	}
	for _, f := range server.BoundedFields() {
		if !seen[f] {
			t.Errorf("the validation table's row %s names no request field", f)
		}
	}
}

// fieldCase is one value of one field, sent in an otherwise empty request.
type fieldCase struct {
	what string
	set  func(m protoreflect.Message)
}

// over fills with 'X', at the bound with 'a': the audit is searched for
// the former.
const overFill = "X"

// boundCases returns requests with fd out of its bound (refused) and at
// its bound (accepted by the table; the handler may still refuse them).
func boundCases(fd protoreflect.FieldDescriptor, b server.FieldBound) (over, at []fieldCase) {
	str := func(s string) protoreflect.Value { return protoreflect.ValueOfString(s) }
	switch {
	case fd.IsMap():
		fill := func(n, keyLen, valLen int, fill string) func(protoreflect.Message) {
			return func(m protoreflect.Message) {
				mp := m.Mutable(fd).Map()
				for i := range n {
					n := strconv.Itoa(i)
					k := strings.Repeat(fill, keyLen-len(n)) + n
					mp.Set(protoreflect.ValueOfString(k).MapKey(), str(strings.Repeat(fill, valLen)))
				}
			}
		}
		over = []fieldCase{
			{"too many entries", fill(b.MaxItems+1, 8, 1, overFill)},
			{"key too long", fill(1, b.MaxKey+1, 1, overFill)},
			{"value too long", fill(1, 8, b.MaxLen+1, overFill)},
			{"control character", func(m protoreflect.Message) { m.Mutable(fd).Map().Set(str("k").MapKey(), str("a\x00b")) }},
		}
		at = []fieldCase{{"at the bounds", fill(b.MaxItems, b.MaxKey, b.MaxLen, "a")}}
	case fd.IsList() && b.Records:
		records := func(n int) func(protoreflect.Message) {
			return func(m protoreflect.Message) {
				ls := m.Mutable(fd).List()
				for range n {
					ls.Append(ls.NewElement())
				}
			}
		}
		over = []fieldCase{{"too many elements", records(b.MaxItems + 1)}}
		at = []fieldCase{{"at the bounds", records(b.MaxItems)}}
	case fd.IsList():
		fill := func(n, l int, fill string) func(protoreflect.Message) {
			return func(m protoreflect.Message) {
				ls := m.Mutable(fd).List()
				for range n {
					ls.Append(str(strings.Repeat(fill, l)))
				}
			}
		}
		over = []fieldCase{
			{"too many elements", fill(b.MaxItems+1, 1, overFill)},
			{"element too long", fill(1, b.MaxLen+1, overFill)},
			{"control character", func(m protoreflect.Message) { m.Mutable(fd).List().Append(str("a\nb")) }},
		}
		at = []fieldCase{{"at the bounds", fill(b.MaxItems, b.MaxLen, "a")}}
	case fd.Kind() == protoreflect.MessageKind: // a duration
		dur := func(d time.Duration) func(protoreflect.Message) {
			return func(m protoreflect.Message) { m.Set(fd, protoreflect.ValueOfMessage(durationpb.New(d).ProtoReflect())) }
		}
		over = []fieldCase{{"too long", dur(b.MaxDur + time.Second)}, {"negative", dur(-time.Second)}}
		at = []fieldCase{{"at the bound", dur(b.MaxDur)}}
	case fd.Kind() == protoreflect.BytesKind: // a master key: length only
		set := func(n int) func(protoreflect.Message) {
			return func(m protoreflect.Message) { m.Set(fd, protoreflect.ValueOfBytes(make([]byte, n))) }
		}
		over = []fieldCase{{"too long", set(b.MaxLen + 1)}}
		at = []fieldCase{{"at the bound", set(b.MaxLen)}}
	default:
		set := func(s string) func(protoreflect.Message) { return func(m protoreflect.Message) { m.Set(fd, str(s)) } }
		over = []fieldCase{{"too long", set(strings.Repeat(overFill, b.MaxLen+1))}, {"control character", set("a\x1bb")}}
		if !b.Text {
			over = append(over, fieldCase{"line break", set("a\nb")})
		}
		at = []fieldCase{{"at the bound", set(strings.Repeat("a", b.MaxLen))}}
	}
	return over, at
}

// boundedLeaf is a field with a bound of its own, reached from the
// request through path (the nested message fields above it).
type boundedLeaf struct {
	path []protoreflect.FieldDescriptor
	fd   protoreflect.FieldDescriptor
	b    server.FieldBound
}

// name is the leaf's path as the server names it: "selector.owner".
func (l boundedLeaf) name() string {
	var n string
	for _, p := range l.path {
		n += string(p.Name()) + "."
	}
	return n + string(l.fd.Name())
}

// in wraps a case of the leaf so that it sets the leaf inside its nested
// messages.
func (l boundedLeaf) in(c fieldCase) fieldCase {
	return fieldCase{c.what, func(m protoreflect.Message) {
		for _, p := range l.path {
			m = m.Mutable(p).Message()
		}
		c.set(m)
	}}
}

// boundedLeaves returns every field of md with a bound, descending into
// nested rows.
func boundedLeaves(md protoreflect.MessageDescriptor, path []protoreflect.FieldDescriptor) []boundedLeaf {
	var out []boundedLeaf
	fs := md.Fields()
	for i := range fs.Len() {
		fd := fs.Get(i)
		b, ok := server.BoundOf(fd.FullName())
		switch {
		case !ok: // scalars; TestValidate_EveryFieldHasABound covers the rest
		case b.Nested:
			out = append(out, boundedLeaves(fd.Message(), append(path[:len(path):len(path)], fd))...)
		default:
			out = append(out, boundedLeaf{path, fd, b})
		}
	}
	return out
}

// call sends req to method as the operator and returns the status.
func call(ctx context.Context, conn *grpc.ClientConn, r rpc, req proto.Message) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if !r.stream {
		return conn.Invoke(ctx, r.name, req, new(emptyReply))
	}
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, r.name)
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	st.CloseSend()
	return st.RecvMsg(new(emptyReply))
}

// emptyReply decodes any answer by discarding it.
type emptyReply struct{ tvv1.ListProvidersRequest }

// fieldViolation returns the field a status's BadRequest detail names.
func fieldViolation(err error) string {
	st, _ := status.FromError(err)
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}

// TestValidate_EveryRPC: for every field of every request of every RPC,
// values out of bounds (too long, too many, control characters, durations
// out of range) are refused with INVALID_ARGUMENT naming the field and not
// repeating the value, and nothing of them is audited; values at the
// bounds pass the table.
func TestValidate_EveryRPC(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	ctx := context.Background()
	rows := 0
	for _, r := range tokenvaultRPCs(t) {
		mt, err := protoregistry.GlobalTypes.FindMessageByName(r.in.FullName())
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range boundedLeaves(r.in, nil) {
			field := l.name()
			over, at := boundCases(l.fd, l.b)
			for _, c := range over {
				rows++
				m := mt.New()
				l.in(c).set(m)
				err := call(ctx, e.conn, r, m.Interface())
				name := r.name + " " + field + " " + c.what
				if status.Code(err) != codes.InvalidArgument || reason(err) != "INVALID_ARGUMENT" {
					t.Errorf("%s = %v; want InvalidArgument/INVALID_ARGUMENT", name, err)
					continue
				}
				if f := fieldViolation(err); !strings.HasPrefix(f, field) {
					t.Errorf("%s: BadRequest names field %q; want %q", name, f, field)
				}
				if msg := status.Convert(err).Message(); strings.Contains(msg, overFill+overFill) || !strings.Contains(msg, field) {
					t.Errorf("%s: message %q; want the field named and its value not repeated", name, msg)
				}
			}
			for _, c := range at {
				m := mt.New()
				l.in(c).set(m)
				if err := call(ctx, e.conn, r, m.Interface()); fieldViolation(err) != "" {
					t.Errorf("%s %s %s = %v; want it past the validation table", r.name, field, c.what, err)
				}
			}
		}
	}
	if rows < 40 {
		t.Errorf("%d rows; want every field of every RPC", rows)
	}
	if err := e.audit.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	recs, _, err := e.audit.List(ctx, audit.Filter{}, "", 100000)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		if strings.Contains(rec.ConnectionID+rec.Provider+rec.Reason+rec.Method+rec.Caller, overFill+overFill) {
			t.Errorf("audit record %+v holds a refused value", rec)
		}
	}
}
