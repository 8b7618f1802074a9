# usermgmt: `make run` to start the service, `make test` to check everything.
# Both prepare the database first (scripts/setup.sh): PostgreSQL is installed and started when
# missing, and a .env with random secrets is written, unless DATABASE_URL is already set.

GO          ?= go
BIN         := usermgmt
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: run test test-tools build lint setup fuzz clean bench

run: setup build
	./$(BIN)

test: setup test-tools lint
	$(GO) test -race -count=1 ./...

# oathtool, chromium, nginx and pgbouncer, which the tests run (installed when missing).
test-tools:
	@scripts/setup.sh --test-tools

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN) .

lint:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

setup:
	@scripts/setup.sh

# Fuzz each decoder and parser for a while (FUZZTIME=1m make fuzz for longer runs).
FUZZTIME ?= 20s
fuzz: setup
	@for target in $$($(GO) test -list '^Fuzz' . | grep '^Fuzz'); do \
		echo "== $$target"; \
		$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) . || exit 1; \
	done

# Load tests of issue 5 (BENCH_DURATION=30s make bench for longer runs): see bench/run.sh.
bench: setup build
	@GO=$(GO) bench/run.sh

clean:
	rm -f $(BIN)
