package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/server"
)

// serveAPI serves e's server with Serve on a loopback API listener (gRPC
// and the JSON gateway on one port) and returns the listener's address.
func (e *env) serveAPI() string {
	e.t.Helper()
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	return e.serveOn(gl)
}

// serveOn serves e's server with Serve on gl and returns gl's address.
func (e *env) serveOn(gl net.Listener) string {
	e.t.Helper()
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, gl, hl, 5*time.Second) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Serve = %v", err)
		}
	})
	return gl.Addr().String()
}

// jsonError is the JSON of a gateway error: a google.rpc.Status.
type jsonError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type     string            `json:"@type"`
		Reason   string            `json:"reason"`
		Domain   string            `json:"domain"`
		Metadata map[string]string `json:"metadata"`
	} `json:"details"`
}

func (je jsonError) reason() string {
	for _, d := range je.Details {
		if d.Type == "type.googleapis.com/google.rpc.ErrorInfo" && d.Domain == "tokenvault.dev" {
			return d.Reason
		}
	}
	return ""
}

// do sends a JSON request with the named key ("" for none) and returns the
// status and body.
func do(t *testing.T, client *http.Client, method, u, key, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if strings.HasPrefix(req.URL.Path, "/tokenvault.v1.") {
		req.Header.Set("Connect-Protocol-Version", "1")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+testKeys[key])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestGateway_Calls drives the JSON gateway with net/http: the same access
// check, validation, errors (google.rpc.Status with our ErrorInfo) and
// answers as gRPC, on the same port as gRPC.
func TestGateway_Calls(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	alice := e.connectLabel("alice", "")
	e.connectLabel("bob", "work")
	e.connectLabel("bob", "home")
	base := "http://" + e.serveAPI()
	c := &http.Client{}

	for _, tc := range []struct {
		name, method, path, key, body string
		wantStatus                    int
		wantReason                    string            // of an error
		wantMsg                       string            // in an error's message
		wantMeta                      map[string]string // in an error's ErrorInfo
		wantJSON                      string            // in an answer
	}{
		{name: "no credential", method: "POST", path: "/v1/token", body: `{"selector":{"owner":"alice","provider":"acme"}}`,
			wantStatus: 401, wantReason: "UNAUTHENTICATED"},
		{name: "unknown key", method: "GET", path: "/v1/providers", key: "not-a-key",
			wantStatus: 401, wantReason: "UNAUTHENTICATED"},
		{name: "token by selector", method: "POST", path: "/v1/token", key: "app", body: `{"selector":{"owner":"alice","provider":"acme"}}`,
			wantStatus: 200, wantJSON: `"connectionId":"` + alice + `"`},
		{name: "token by id, proto field names", method: "POST", path: "/v1/token", key: "app", body: `{"connection_id":"` + alice + `","min_valid_for":"60s"}`,
			wantStatus: 200, wantJSON: `"tokenType":"Bearer"`},
		{name: "both id and selector", method: "POST", path: "/v1/token", key: "app", body: `{"connectionId":"` + alice + `","selector":{"owner":"alice","provider":"acme"}}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "not both"},
		{name: "neither id nor selector", method: "POST", path: "/v1/token", key: "app", body: `{}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "connection_id or selector is required"},
		{name: "several connections", method: "POST", path: "/v1/token", key: "app", body: `{"selector":{"owner":"bob","provider":"acme"}}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "2 connections", wantMeta: map[string]string{"connections": "2", "labels": "2"}},
		{name: "not connected", method: "POST", path: "/v1/token", key: "app", body: `{"selector":{"owner":"zed","provider":"acme"}}`,
			wantStatus: 404, wantReason: "NOT_CONNECTED"},
		{name: "hidden from a credential limited to another provider", method: "POST", path: "/v1/token", key: "app-other", body: `{"selector":{"owner":"alice","provider":"acme"}}`,
			wantStatus: 404, wantReason: "NOT_CONNECTED"},
		{name: "out of bounds", method: "POST", path: "/v1/token", key: "app", body: `{"selector":{"owner":"` + strings.Repeat("x", 300) + `","provider":"acme"}}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "selector.owner is longer than"},
		{name: "an application may not revoke", method: "POST", path: "/v1/connections/" + alice + ":revoke", key: "app", body: `{}`,
			wantStatus: 403, wantReason: "PERMISSION_DENIED"},
		{name: "unknown field", method: "POST", path: "/v1/token", key: "app", body: `{"connectionId":"` + alice + `","forceRefesh":true}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "a field this method does not take"},
		{name: "not JSON", method: "POST", path: "/v1/token", key: "app", body: `connection_id=secret-ish`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "not JSON"},
		{name: "unknown query parameter", method: "GET", path: "/v1/connections?ownr=alice", key: "app",
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "ownr"},
		{name: "bad query parameter", method: "GET", path: "/v1/connections?page_size=many", key: "app",
			wantStatus: 400, wantReason: "INVALID_ARGUMENT", wantMsg: "page_size"},
		{name: "body over the size limit", method: "POST", path: "/v1/connect", key: "app", body: `{"purpose":"` + strings.Repeat("x", 2<<20) + `"}`,
			wantStatus: 400, wantReason: "INVALID_ARGUMENT"},
		{name: "connection by id", method: "GET", path: "/v1/connections/" + alice, key: "app",
			wantStatus: 200, wantJSON: `"status":"CONNECTION_STATUS_ACTIVE"`},
		{name: "connection by selector", method: "GET", path: "/v1/connections:lookup?selector.owner=bob&selector.provider=acme&selector.label=home", key: "app",
			wantStatus: 200, wantJSON: `"label":"home"`},
		{name: "list by owner", method: "GET", path: "/v1/connections?owner=alice", key: "app",
			wantStatus: 200, wantJSON: `"connectionId":"` + alice + `"`},
		{name: "providers", method: "GET", path: "/v1/providers", key: "app",
			wantStatus: 200, wantJSON: `"name":"acme"`},
		{name: "the Connect protocol too", method: "POST", path: "/tokenvault.v1.TokenVaultService/ListProviders", key: "app", body: `{}`,
			wantStatus: 200, wantJSON: `"name":"acme"`},
		{name: "no such route", method: "GET", path: "/v1/nope", key: "app",
			wantStatus: 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, c, tc.method, base+tc.path, tc.key, tc.body)
			if code != tc.wantStatus {
				t.Fatalf("%s %s = %d %s; want %d", tc.method, tc.path, code, body, tc.wantStatus)
			}
			if code == 200 {
				if !strings.Contains(string(body), tc.wantJSON) {
					t.Errorf("answer %s; want it to contain %s", body, tc.wantJSON)
				}
				return
			}
			var je jsonError
			if err := json.Unmarshal(body, &je); err != nil {
				t.Fatalf("error body %q is not JSON: %v", body, err)
			}
			if je.Code == 0 || je.Message == "" {
				t.Errorf("error %s; want a code and a message", body)
			}
			if tc.wantReason != "" && je.reason() != tc.wantReason {
				t.Errorf("error %s; want reason %s", body, tc.wantReason)
			}
			if !strings.Contains(je.Message, tc.wantMsg) {
				t.Errorf("message %q; want it to contain %q", je.Message, tc.wantMsg)
			}
			for k, v := range tc.wantMeta {
				if got := je.Details[0].Metadata[k]; got != v {
					t.Errorf("metadata %s = %q; want %q", k, got, v)
				}
			}
		})
	}

	// The token is the one gRPC hands out, and the answer decodes into the
	// API's own message.
	_, body := do(t, c, "POST", base+"/v1/token", "app", `{"selector":{"owner":"alice","provider":"acme"}}`)
	var got tvv1.GetAccessTokenResponse
	if err := protojson.Unmarshal(body, &got); err != nil {
		t.Fatalf("answer %s does not decode: %v", body, err)
	}
	want, err := e.api.GetAccessToken(context.Background(), &tvv1.GetAccessTokenRequest{ConnectionId: alice})
	if err != nil || got.AccessToken != want.AccessToken || got.ExpireTime.AsTime() != want.ExpireTime.AsTime() {
		t.Errorf("JSON token %v; gRPC's %v, %v", &got, want, err)
	}

	// gRPC still answers on the same port.
	conn, err := grpc.NewClient(strings.TrimPrefix(base, "http://"),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(bearerCreds(testKeys["app"])))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := tvv1.NewTokenVaultServiceClient(conn).GetAccessToken(context.Background(),
		&tvv1.GetAccessTokenRequest{Selector: sel("alice", "acme", "")}); err != nil {
		t.Errorf("gRPC on the gateway's port = %v", err)
	}
}

// TestGateway_AuditAndRateLimit: JSON calls are audited and rate limited
// like gRPC calls, by the same gate.
func TestGateway_AuditAndRateLimit(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	alice := e.connectLabel("alice", "")
	base := "http://" + e.serveAPI()
	c := &http.Client{}
	if code, body := do(t, c, "POST", base+"/v1/token", "app", `{"selector":{"owner":"alice","provider":"acme"}}`); code != 200 {
		t.Fatalf("token = %d %s", code, body)
	}
	resp, err := e.admin.ListAuditEvents(context.Background(), &tvv1.ListAuditEventsRequest{Caller: "app"})
	if err != nil || len(resp.Events) != 1 {
		t.Fatalf("audit of app = %v, %v; want one event", resp, err)
	}
	if ev := resp.Events[0]; ev.Method != tvv1.TokenVaultService_GetAccessToken_FullMethodName || ev.ConnectionId != alice || ev.Outcome != "OK" {
		t.Errorf("audit event %v; want GetAccessToken of %s, OK", ev, alice)
	}

	// app-slow: 1 call a second, bursts of 2.
	var last []byte
	limited := false
	for range 3 {
		code, body := do(t, c, "GET", base+"/v1/providers", "app-slow", "")
		if code == http.StatusTooManyRequests {
			limited, last = true, body
			break
		}
	}
	if !limited {
		t.Fatal("3 calls at once of a 2-burst credential all passed; want 429")
	}
	var je jsonError
	if err := json.Unmarshal(last, &je); err != nil || je.reason() != "RATE_LIMITED" || je.Details[0].Metadata["retry_after_seconds"] == "" {
		t.Errorf("429 body %s (%v); want RATE_LIMITED with retry_after_seconds", last, err)
	}
}

// TestGateway_UnixSocketPeer: on the unix socket the gateway knows the
// peer's uid, as gRPC does, and a uid not listed is refused.
func TestGateway_UnixSocketPeer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("SO_PEERCRED is Linux-only")
	}
	e := newEnv(t, providertest.Options{})
	e.connectLabel("alice", "")
	uid := uint32(os.Getuid())
	for _, tc := range []struct {
		name       string
		peers      []server.Peer
		wantStatus int
	}{
		{"our uid is an application", []server.Peer{{UID: uid, Access: server.Access{Role: server.RoleApplication}}}, 200},
		{"only another uid is listed", []server.Peer{{UID: uid + 1, Access: server.Access{Role: server.RoleOperator}}}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := server.NewAuth(nil, tc.peers)
			if err != nil {
				t.Fatal(err)
			}
			srv := server.New(server.Config{Vault: e.v, Auth: auth})
			sock := filepath.Join(shortTempDir(t), "tv.sock")
			ul, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			srv.AddGRPCListener(ul)
			gl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			hl, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ctx, gl, hl, 5*time.Second) }()
			defer func() { cancel(); <-done }()

			c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}}}
			defer c.CloseIdleConnections()
			code, body := do(t, c, "POST", "http://tokenvault/v1/token", "", `{"selector":{"owner":"alice","provider":"acme"}}`)
			if code != tc.wantStatus {
				t.Errorf("token over the socket = %d %s; want %d", code, body, tc.wantStatus)
			}
			// Over TCP the same call has no uid.
			if code, _ := do(t, &http.Client{}, "GET", "http://"+gl.Addr().String()+"/v1/providers", "", ""); code != 401 {
				t.Errorf("without a key over TCP = %d; want 401", code)
			}
		})
	}
}

// TestGateway_EveryMethodHasARoute: every unary method of the API has a
// REST route in http_rules.yaml, so the OpenAPI document covers it.
func TestGateway_EveryMethodHasARoute(t *testing.T) {
	for _, r := range tokenvaultRPCs(t) {
		if r.stream {
			continue
		}
		svc, method, _ := strings.Cut(strings.TrimPrefix(r.name, "/"), "/")
		if !server.HasHTTPRule(svc + "." + method) {
			t.Errorf("%s has no rule in server/http_rules.yaml", r.name)
		}
	}
}

// TestGateway_OpenAPIDocumentsEveryRoute: the committed OpenAPI document names every
// route of http_rules.yaml (make check-generated keeps it byte-equal to
// what buf generate makes of it).
func TestGateway_OpenAPIDocumentsEveryRoute(t *testing.T) {
	b, err := os.ReadFile("../docs/openapi.swagger.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	// The document names path variables by their JSON names.
	camel := regexp.MustCompile(`_([a-z])`)
	for _, route := range server.HTTPRoutes() {
		method, path, _ := strings.Cut(route, " ")
		path = camel.ReplaceAllStringFunc(path, func(s string) string { return strings.ToUpper(s[1:]) })
		if _, ok := doc.Paths[path][strings.ToLower(method)]; !ok {
			t.Errorf("docs/openapi.swagger.json lacks %s", route)
		}
	}
}

// TestGateway_WatchEventsOverConnect: the stream REST cannot carry is
// served by the Connect protocol's streaming (enveloped JSON messages),
// with the same access check.
func TestGateway_WatchEventsOverConnect(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connectLabel("alice", "")
	base := "http://" + e.serveAPI()
	body := []byte(`{"afterSequence":"0"}`)
	env := append([]byte{0, 0, 0, 0, byte(len(body))}, body...)
	watch := func(key string) (*http.Response, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, "POST", base+"/tokenvault.v1.TokenVaultService/WatchEvents", strings.NewReader(string(env)))
		req.Header.Set("Content-Type", "application/connect+json")
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+testKeys[key])
		}
		return http.DefaultClient.Do(req)
	}
	resp, err := watch("app")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	head := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatalf("first frame: %v (status %d)", err, resp.StatusCode)
	}
	n := int(head[1])<<24 | int(head[2])<<16 | int(head[3])<<8 | int(head[4])
	msg := make([]byte, n)
	if _, err := io.ReadFull(resp.Body, msg); err != nil {
		t.Fatal(err)
	}
	if head[0] != 0 || !strings.Contains(string(msg), `"connection.created"`) || !strings.Contains(string(msg), id) {
		t.Errorf("first frame %x %s; want the connection.created event of %s", head, msg, id)
	}

	// Without a key the stream ends at once with UNAUTHENTICATED in its
	// end-of-stream frame.
	resp, err = watch("")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	all, _ := io.ReadAll(resp.Body)
	if len(all) < 5 || all[0]&2 == 0 || !strings.Contains(string(all), "unauthenticated") {
		t.Errorf("without a key: %x %s; want an end-of-stream frame with unauthenticated", all[:min(5, len(all))], all)
	}
}
