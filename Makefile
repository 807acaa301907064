# sidemesh — see README.md. `make run` starts the local mesh, `make test` runs every test.
GO      ?= go
BIN     := bin
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin
export PATH := $(GOBIN_DIR):$(PATH)

MAINS := controlplane=./controlplane/cmd/controlplane \
         hds=./services/hds/cmd/hds \
         rls=./services/rls/cmd/rls \
         proxy=./proxy/cmd/proxy \
         loadtest=./loadtest/cmd/loadtest \
         meshrun=./cmd/meshrun

.PHONY: all build test test-short deps run bench lint proto images clean

all: build

build:
	@mkdir -p $(BIN)
	@for m in $(MAINS); do name=$${m%%=*}; pkg=$${m#*=}; \
	  echo "go build -o $(BIN)/$$name $$pkg"; \
	  $(GO) build -o $(BIN)/$$name $$pkg || exit 1; done

deps:
	@./scripts/ensure-deps.sh

# All tests, with the race detector (most packages are concurrent).
test: deps
	$(GO) vet ./...
	$(GO) test -race -timeout 40m ./...

test-short: deps
	$(GO) test -short ./...

run: build
	$(BIN)/meshrun

# Standard load-test scenarios; writes loadtest/results/<date>.md (+ JSON, SVG).
bench: build deps
	$(BIN)/loadtest bench --out loadtest/results

# One image with every binary (needs a Docker engine).
images:
	@if docker info >/dev/null 2>&1; then docker build -t sidemesh:dev .; \
	else echo "make images: no Docker engine reachable (docker info failed); the docker client alone cannot build images. Run it where a Docker engine runs."; exit 1; fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Regenerates the project's own protos; the generated Go is committed.
proto:
	@command -v protoc >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq protobuf-compiler >/dev/null; } || { echo "protoc missing: apt-get install protobuf-compiler"; exit 1; }
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	cd proto && protoc -I . --go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. $$(cd proto && find . -name '*.proto')

clean:
	rm -rf $(BIN)
