package server

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"gopkg.in/yaml.v3"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
)

// The JSON gateway serves TokenVaultService and AdminService as JSON over
// HTTP/1.1 on the API listeners, beside gRPC (split.go tells the two apart
// by a connection's first bytes). It is connectrpc.com/vanguard's
// transcoder in front of the same *grpc.Server: a JSON call becomes a gRPC
// call in memory and passes the same interceptors (the access check, the
// validation table, audit, rate limits, metrics, logging) and handlers as
// any other, so there is one implementation of each.
//
// Routes are the google.api.HttpRule rules of http_rules.yaml (REST-style:
// POST /v1/token, GET /v1/connections/{connection_id}, ...); every method
// is also reachable by the Connect protocol (POST /<service>/<method> with
// a JSON body). Errors are google.rpc.Status as JSON, carrying the same
// ErrorInfo (reason, metadata) as over gRPC, with the HTTP status of the
// code (400, 401, 403, 404, 429, 503, ...).

//go:embed http_rules.yaml
var httpRulesYAML []byte

// httpRules returns the rules of http_rules.yaml.
func httpRules() ([]*annotations.HttpRule, error) {
	var doc struct {
		HTTP any `yaml:"http"`
	}
	if err := yaml.Unmarshal(httpRulesYAML, &doc); err != nil {
		return nil, fmt.Errorf("http_rules.yaml: %w", err)
	}
	js, err := json.Marshal(doc.HTTP)
	if err != nil {
		return nil, fmt.Errorf("http_rules.yaml: %w", err)
	}
	var h annotations.Http
	if err := protojson.Unmarshal(js, &h); err != nil {
		return nil, fmt.Errorf("http_rules.yaml: %w", err)
	}
	return h.GetRules(), nil
}

// newGateway returns the JSON gateway's handler over srv, taking requests
// of up to maxMsg bytes. The transcoder is built at the first request, not
// on the way to serving gRPC (a few milliseconds of a start: the rules'
// YAML, the services' descriptors); http_rules.yaml is compiled in and its
// tests keep it valid, so building it does not fail, and if it did every
// JSON call would be answered 500 with the error logged.
func newGateway(srv *grpc.Server, maxMsg int, log *slog.Logger) http.Handler {
	build := sync.OnceValues(func() (http.Handler, error) {
		h, err := buildGateway(srv, maxMsg)
		if err != nil {
			log.Error("json gateway", slog.String("err", err.Error()))
		}
		return h, err
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, err := build()
		if err != nil {
			http.Error(w, "json gateway unavailable", http.StatusInternalServerError)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// buildGateway builds the JSON gateway's transcoder (newGateway).
func buildGateway(srv *grpc.Server, maxMsg int) (http.Handler, error) {
	rules, err := httpRules()
	if err != nil {
		return nil, err
	}
	svcs := []*vanguard.Service{
		vanguard.NewService(tvv1.TokenVaultService_ServiceDesc.ServiceName, srv),
		vanguard.NewService(tvv1.AdminService_ServiceDesc.ServiceName, srv),
	}
	t, err := vanguard.NewTranscoder(svcs,
		vanguard.WithRules(rules...),
		vanguard.WithDefaultServiceOptions(
			// In memory to grpc.Server.ServeHTTP, binary protobuf.
			vanguard.WithTargetProtocols(vanguard.ProtocolGRPC),
			vanguard.WithTargetCodecs(vanguard.CodecProto),
			vanguard.WithMaxMessageBufferBytes(uint32(maxMsg)),
		),
		vanguard.WithCodec(func(res vanguard.TypeResolver) vanguard.Codec {
			return gatewayJSON{vanguard.JSONCodec{
				MarshalOptions:   protojson.MarshalOptions{Resolver: res, EmitUnpopulated: true},
				UnmarshalOptions: protojson.UnmarshalOptions{Resolver: res},
			}}
		}),
		vanguard.WithUnknownHandler(http.HandlerFunc(noRoute)),
	)
	if err != nil {
		return nil, err
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f := &requestFault{ResponseWriter: w}
		t.ServeHTTP(f, r)
		f.finish()
	}), nil
}

// requestFault gives the errors vanguard answers by itself, for requests
// it could not turn into a call, the shape of every other error: our
// ErrorInfo, and the request's fault said as INVALID_ARGUMENT (400). They
// are a query parameter that names no field (which gRPC, failing to decode
// the request, reports as UNKNOWN: the handlers never answer UNKNOWN), a
// parameter value of the wrong type, and a body over the size limit
// (RESOURCE_EXHAUSTED, whose 429 would invite a retry). The message,
// vanguard's, names the parameter. Errors that carry our ErrorInfo, and
// every answer below 400, pass through untouched; an error's body is held
// until the end, and at most maxFaultBody of it.
type requestFault struct {
	http.ResponseWriter
	code int // an error's status, held until finish; 0 while none
	body []byte
}

const maxFaultBody = 8 << 10

func (f *requestFault) WriteHeader(code int) {
	if code >= 400 && f.code == 0 {
		f.code = code
		return
	}
	f.ResponseWriter.WriteHeader(code)
}

func (f *requestFault) Write(b []byte) (int, error) {
	if f.code != 0 {
		f.body = append(f.body, b[:min(len(b), maxFaultBody-len(f.body))]...)
		return len(b), nil
	}
	return f.ResponseWriter.Write(b)
}

func (f *requestFault) finish() {
	if f.code == 0 {
		return
	}
	var st spb.Status
	if protojson.Unmarshal(f.body, &st) == nil && errorReason(status.FromProto(&st).Err()) == "" {
		switch codes.Code(st.GetCode()) {
		case codes.Unknown, codes.InvalidArgument, codes.OutOfRange, codes.ResourceExhausted:
			if b, err := protojson.Marshal(status.Convert(statusWithReason(codes.InvalidArgument, ReasonInvalidArgument, st.GetMessage(), nil)).Proto()); err == nil {
				f.code, f.body = http.StatusBadRequest, b
				f.Header().Set("Content-Type", "application/json")
			}
		}
	}
	f.Header().Del("Content-Length")
	f.ResponseWriter.WriteHeader(f.code)
	f.ResponseWriter.Write(f.body)
}

// Flush and Unwrap keep streaming answers (the Connect protocol's
// WatchEvents) flowing.
func (f *requestFault) Flush() {
	if fl, ok := f.ResponseWriter.(http.Flusher); ok && f.code == 0 {
		fl.Flush()
	}
}

func (f *requestFault) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// gatewayJSON is vanguard's JSON codec with two changes. A body with a
// field the method does not take is refused rather than half-read: a
// misspelt "forceRefresh" must not pass unnoticed. And a body that does not
// decode is INVALID_ARGUMENT with our ErrorInfo, whose message does not
// repeat the body (protojson's errors quote it).
type gatewayJSON struct{ vanguard.JSONCodec }

func (c gatewayJSON) Unmarshal(b []byte, m proto.Message) error {
	return badBody(c.JSONCodec.Unmarshal(b, m))
}

func (c gatewayJSON) UnmarshalField(b []byte, m proto.Message, fd protoreflect.FieldDescriptor) error {
	return badBody(c.JSONCodec.UnmarshalField(b, m, fd))
}

func badBody(err error) error {
	if err == nil {
		return nil
	}
	msg := "the request body is not JSON of this method's request message"
	if strings.Contains(err.Error(), "unknown field") {
		msg = "the request body has a field this method does not take"
	}
	ce := connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
	if d, err := connect.NewErrorDetail(&errdetails.ErrorInfo{Reason: ReasonInvalidArgument, Domain: ErrorDomain}); err == nil {
		ce.AddDetail(d)
	}
	return ce
}

// noRoute answers a request for no route in the shape of every other error.
func noRoute(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	fmt.Fprintln(w, `{"code":12,"message":"no such route; the routes are in docs/openapi.swagger.json","details":[]}`)
}

// gatewayPeerKey carries the kernel's word on a unix-socket peer from the
// gateway's connection to authentication: grpc.Server.ServeHTTP knows no
// transport credentials, so the peer's AuthInfo is not set there.
type gatewayPeerKey struct{}

// gatewayConnContext records a unix-socket peer's credentials in the
// context of every request on its connection (auth.go trusts them as it
// trusts PeerCredentials on gRPC connections).
func gatewayConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := netConn(c).(*net.UnixConn)
	if !ok {
		return ctx
	}
	if uid, gid, pid, ok := peerUcred(uc); ok {
		return context.WithValue(ctx, gatewayPeerKey{}, PeerAuthInfo{HasCred: true, UID: uid, GID: gid, PID: pid})
	}
	return ctx
}
