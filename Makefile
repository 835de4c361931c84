# The targets the README and CI use. Tools are pinned and installed into
# .bin/ from the Go module proxy, and the Node.js client's packages from
# its lock file, so a fresh machine needs only Go and Node.js (npm).
GO       ?= go
BIN      := $(CURDIR)/.bin
BUF      := $(BIN)/buf
export PATH := $(BIN):$(PATH)

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
# protoc-gen-openapiv2 writes docs/openapi.swagger.json, the JSON gateway's
# routes (server/http_rules.yaml).
GRPC_GATEWAY_VERSION       := v2.34.0
# grpcurl drives the running sidecar in cmd/tokenvault/grpcurl_test.go, as
# an operator would.
GRPCURL_VERSION            := v1.9.4
# helm lints and renders deploy/helm/tokenvault (make deploy-test).
HELM_VERSION               := v4.3.2
# The Node.js client's generator (protoc-gen-es), its compiler and its
# runtime come from client/node's lock file.
NPM           ?= npm
NODE_CLIENT   := client/node
NODE_EXAMPLE  := examples/node-slack-notify
PROTOC_GEN_ES := $(NODE_CLIENT)/node_modules/.bin/protoc-gen-es

# The image's binary: static (no cgo), no build paths, the version stamped.
# The Dockerfile builds with this target, so the tested binary is the one
# shipped.
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
IMAGE_OUT     ?= $(BIN)/image/tokenvault
IMAGE_LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: run test lint vet generate check-generated tools bench build clean node-test browser test-deps image-binary deploy-test

# The sidecar is built static (no cgo), as the image's binary is: nothing
# in it needs C (the resolver and user lookups are Go's own), and a static
# binary starts without loading libc and the dynamic linker (about 3 ms
# and 1.5 MiB resident less).
## run: the sidecar in dev mode (no config; sandbox provider built in)
run:
	CGO_ENABLED=0 $(GO) run ./cmd/tokenvault serve --dev

## build: the tokenvault binary into .bin/ (static)
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/tokenvault ./cmd/tokenvault

## image-binary: the binary the container image ships, built as the Dockerfile builds it
image-binary:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(IMAGE_LDFLAGS)' -o $(IMAGE_OUT) ./cmd/tokenvault

## test: everything CI checks: lint, generated code current, race tests
## (the connect page's tests drive Debian's chromium, and the JSON gateway's
## curl and openssl, which test-deps installs)
test: lint check-generated browser node-test test-deps
	TOKENVAULT_BIN=$(BIN)/tokenvault $(GO) test -race -count=1 -timeout 20m ./...
	$(MAKE) deploy-test

## deploy-test: the Kubernetes manifests (kustomize's Go API) and the Helm chart
## (the pinned helm: lint, template) rendered, every object strictly decoded into
## its k8s.io/api type and checked; the injector (tokenvault inject, the binary
## built here) sent AdmissionReview v1 requests over HTTPS and its patches applied
## and decoded; a module of its own (deploy/go.mod), so the Kubernetes libraries
## stay out of the sidecar's
deploy-test: $(BIN)/helm build
	cd deploy && TOKENVAULT_HELM=$(BIN)/helm TOKENVAULT_BIN=$(BIN)/tokenvault $(GO) test -count=1 -timeout 10m ./...

# helm lints and renders the chart in deploy-test (built from the module
# proxy: about 9 CPU-minutes cold, once per machine).
$(BIN)/helm:
	GOBIN=$(BIN) $(GO) install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

## test-deps: the Debian tools tests drive as the README does, where missing:
## curl (the JSON gateway walkthrough) and openssl (the shell webhook verifier)
test-deps:
	@command -v curl >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && apt-get install -y -qq curl openssl; \
	  else echo "curl or openssl is missing: apt-get install curl openssl (their tests skip without them)"; fi; }

## node-test: the Node.js client's tests (node --test) against a real sidecar;
## then the Express example's packages, for its Go test (go test ./examples/...)
node-test: build $(PROTOC_GEN_ES)
	cd $(NODE_CLIENT) && TOKENVAULT_BIN=$(BIN)/tokenvault $(NPM) test
	cd $(NODE_EXAMPLE) && $(NPM) ci --ignore-scripts --no-audit --no-fund

## browser: Debian's chromium for the page tests, if missing. CI runs as
## root on a fresh Debian machine; elsewhere it says what to install (the
## page tests skip without it, and fail when CI is set).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; \
	  else echo "chromium is not installed: apt-get install chromium (the connect page's browser tests skip without it)"; fi; }

tools: $(BUF) $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/protoc-gen-openapiv2 $(BIN)/grpcurl $(PROTOC_GEN_ES)

# Scripts are skipped here: the test script compiles the client.
$(PROTOC_GEN_ES): $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && $(NPM) ci --ignore-scripts --no-audit --no-fund
	@touch $@

$(BUF):
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/protoc-gen-openapiv2:
	GOBIN=$(BIN) $(GO) install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2@$(GRPC_GATEWAY_VERSION)
$(BIN)/grpcurl:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

lint: tools vet
	$(BUF) lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...

generate: tools
	$(BUF) generate

## check-generated: the committed generated code and OpenAPI document match
## the .proto files (and server/http_rules.yaml)
check-generated: tools
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(BUF) generate -o $$tmp && \
	diff -r --exclude='*.proto' $$tmp/proto proto >/dev/null && \
	diff $$tmp/docs/openapi.swagger.json docs/openapi.swagger.json >/dev/null && \
	diff -r $$tmp/$(NODE_CLIENT)/src/gen $(NODE_CLIENT)/src/gen >/dev/null || { echo "generated code is stale: run 'make generate'"; \
		diff -r --exclude='*.proto' $$tmp/proto proto | head -40; diff $$tmp/docs/openapi.swagger.json docs/openapi.swagger.json | head -40; \
		diff -r $$tmp/$(NODE_CLIENT)/src/gen $(NODE_CLIENT)/src/gen | head -40; exit 1; }

## bench: the hot-path benchmark (GetAccessToken vs a bare grpc-go server and an empty handler)
bench:
	$(GO) test ./server -run '^$$' -bench HotPath -benchtime 1x -timeout 30m

clean:
	rm -rf $(BIN) $(NODE_CLIENT)/node_modules $(NODE_CLIENT)/dist $(NODE_EXAMPLE)/node_modules
