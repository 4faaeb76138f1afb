# syntax=docker/dockerfile:1
# Multi-stage build: static Go binaries on a distroless, non-root base.
#   docker build -t proxysession .                    # the service (default target)
#   docker build -t proxysession-demo --target demo . # the demo backend

# The Go version of go.mod's go line: with GOTOOLCHAIN=local an older
# 1.26 image refuses the module instead of fetching a toolchain.
FROM golang:1.26.8 AS build
ENV GOTOOLCHAIN=local
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/proxysession ./cmd/demo-backend
# The state file's directory (-state-file): a fresh named volume mounted
# there takes this ownership and mode.
RUN mkdir -p /out/state

FROM gcr.io/distroless/static-debian12:nonroot AS demo
COPY --from=build /out/demo-backend /demo-backend
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/demo-backend"]

FROM gcr.io/distroless/static-debian12:nonroot AS proxysession
COPY --from=build /out/proxysession /proxysession
COPY --from=build --chown=65532:65532 --chmod=0700 /out/state /var/lib/proxysession
USER 65532:65532
# 9002: ext_proc gRPC; 9090: admin (/healthz, /readyz, /metrics)
EXPOSE 9002 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/proxysession", "healthcheck"]
ENTRYPOINT ["/proxysession"]
