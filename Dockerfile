# syntax=docker/dockerfile:1
# One image with every sidemesh binary: static (CGO_ENABLED=0), distroless, non-root.
# Each container picks its binary by command, e.g. ["rls", "--grpc-addr", ...].
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ \
      ./controlplane/cmd/controlplane ./services/hds/cmd/hds ./services/rls/cmd/rls \
      ./proxy/cmd/proxy ./loadtest/cmd/loadtest ./cmd/meshrun

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# No entrypoint: the command names the binary.
CMD ["meshrun", "--help"]
