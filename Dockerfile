# The tokenvault sidecar's image: a static binary, its licence notices and
# the CA bundle, on an empty base, run as a non-root uid. No shell: probes
# use `tokenvault health` or the health listener.
#
#   docker build --build-arg VERSION=v1.2.3 -t tokenvault:v1.2.3 .
#
# The binary is built by `make image-binary`, the target the tests check
# (static, version stamped), so what is tested is what ships.

ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=devel
RUN make image-binary VERSION=${VERSION} IMAGE_OUT=/out/tokenvault
# The licences of every module the binary links (read from its build
# information) and of Go itself.
RUN go run ./cmd/tokenvault-notices /out/tokenvault > /out/NOTICES \
 && cp LICENSE /out/LICENSE \
 && cp /usr/share/doc/ca-certificates/copyright /out/ca-certificates.copyright \
 && mkdir -p /out/var/lib/tokenvault /out/run/tokenvault

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/LICENSE /out/NOTICES /out/ca-certificates.copyright /usr/share/doc/tokenvault/
COPY --from=build --chown=65532:65532 /out/var/lib/tokenvault /var/lib/tokenvault
COPY --from=build --chown=65532:65532 /out/run/tokenvault /run/tokenvault
COPY --from=build /out/tokenvault /usr/local/bin/tokenvault
# 65532: the "nonroot" uid of distroless images; no passwd entry is needed.
USER 65532:65532
# public (OAuth callback), health (probes), metrics. The API stays on
# loopback or a unix socket and is never exposed.
EXPOSE 7071 7072 7073
ENTRYPOINT ["/usr/local/bin/tokenvault"]
CMD ["serve", "--config", "/etc/tokenvault/tokenvault.yaml"]
