# caretaker — see README.md. `make run` starts the lab, `make test` runs
# every test; both first run deploy/setup.sh, which installs what is missing
# (as root) or says what is missing and how to install it.
SHELL   := bash
GO      ?= go
BIN     := bin
PROMTOOL ?= promtool
GOFILES := $(shell find . -name '*.go' -not -path './.git/*')
# What `caretaker version` says (internal/version), and the packages'
# version (internal/debpkg.DebianVersion): git describe, the commit and its
# time; "dev" outside git.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y%m%d%H%M%S 2>/dev/null)
LDFLAGS := -X caretaker/internal/version.Version=$(VERSION) -X caretaker/internal/version.Commit=$(COMMIT) -X caretaker/internal/version.Date=$(DATE)
# The full output of the last `make test`.
TESTLOG ?= $(BIN)/test.log

.PHONY: all setup build package image run chaos test lint rules-test go-test fuzz bench clean

all: build

# Installs (as root) the packages of the build, the lab and the tests, and
# starts libvirtd. Idempotent.
setup:
	@bash deploy/setup.sh test

# CGO_ENABLED=0: caretaker is pure Go (libvirt is spoken to over its socket),
# so the binaries are static, and the same whether or not the machine has a
# C compiler.
build:
	@bash deploy/setup.sh build
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/caretaker ./cmd/caretaker
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/caretaker-agent ./cmd/caretaker-agent
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/runbook ./cmd/runbook

# Debian packages of the binaries just built (internal/debpkg, nfpm as a
# library): caretaker-agent, caretaker-server and caretaker-runbook in
# $(BIN)/pkg/; prints their paths.
package: build
	@rm -f $(BIN)/pkg/*.deb
	@$(GO) run ./internal/debpkg/mkdeb --bin $(BIN) --out $(BIN)/pkg --version '$(VERSION)' --date '$(DATE)'

# The container image (internal/ociimage): a Debian 12 root that mmdebstrap
# makes once (as root, about 30 s) and $(BIN)/image-root/ keeps, keyed by its
# package list, and the binaries just built, as $(BIN)/caretaker-image.tar
# for `podman load -i` or `docker load -i`. Its time is SOURCE_DATE_EPOCH or
# the commit's: one commit on one cached root gives the same bytes.
image: build
	@$(GO) run ./internal/ociimage/mkimage --bin $(BIN) --out $(BIN)/caretaker-image.tar --cache $(BIN)/image-root --version '$(VERSION)' --revision '$(COMMIT)'

# Starts the embedded default: a server and two hosts' agents with guests.
# Without root (or without libvirtd) the lab runs on libvirt's test driver.
run:
	@bash deploy/setup.sh run
	@$(MAKE) --no-print-directory build
	@echo "runbook is at ./$(BIN)/runbook (try: ./$(BIN)/runbook status)"
	./$(BIN)/caretaker lab $(ARGS)

# Game day (README: Game day): the lab with two servers, every fault in
# turn, then a storm, and a scoreboard; exit status 1 when a fault is not
# healed or an action doubled. As root with QEMU; about 15 minutes. ARGS
# adds lab flags, e.g. ARGS='-o json'.
chaos:
	@bash deploy/setup.sh run
	@$(MAKE) --no-print-directory build
	./$(BIN)/caretaker lab --chaos all --servers 2 $(ARGS)

lint:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

rules-test:
	$(PROMTOOL) check rules alerts/*.rules.yml
	$(PROMTOOL) test rules alerts/tests/*.test.yml

# As root, CARETAKER_REQUIRE_E2E=1 turns a test's "needs libvirtd / QEMU /
# promtool / …" skip into a failure: the real components are all there after
# setup. Set CARETAKER_REQUIRE_E2E=0 to allow skips.
test:
	@bash deploy/setup.sh test
	@$(MAKE) --no-print-directory lint rules-test go-test

# -p 1: the tests that start real QEMU guests (kvm, dashboards, lab) share one
# libvirtd and two cores; run one package at a time so none starves. The
# console shows each package's result and every failure; $(TESTLOG) has all.
go-test:
	@mkdir -p $(BIN)
	@set -o pipefail; \
	if [ "$$(id -u)" = 0 ]; then export CARETAKER_REQUIRE_E2E=$${CARETAKER_REQUIRE_E2E:-1}; fi; \
	echo "go test -count=1 -p 1 -timeout 15m ./... (CARETAKER_REQUIRE_E2E=$${CARETAKER_REQUIRE_E2E:-0}; full output in $(TESTLOG))"; \
	$(GO) test -count=1 -p 1 -timeout 15m -v ./... 2>&1 | tee $(TESTLOG) | awk -f .ci/testsummary.awk

# Every Fuzz* target in the tree, FUZZTIME each (found with go test -list;
# the corpus grows in the Go cache, a failing input lands in the package's
# testdata/fuzz/). Each target's execs are shown, so a slow one is seen.
# FUZZMINIMIZETIME bounds the minimisation of each new input: at Go's
# default (60s) a short run spends its time shrinking the first inputs that
# widen coverage instead of trying new ones (the policy parser managed 32
# executions in 10 s so); a crasher found is kept either way.
# Go 1.26's fuzz coordinator can fail a run with a bare "context deadline
# exceeded" as -fuzztime ends, with no failing input (golang/go#75804,
# fixed in Go 1.27): such a run, and only such, is tried again, up to three
# times (twice in a row was seen on a loaded machine).
FUZZTIME ?= 3s
FUZZMINIMIZETIME ?= 100x
fuzz:
	@set -euo pipefail; \
	targets=$$($(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ { names = names " " $$1 } /^ok / { if (names != "") print $$2 names; names = "" }'); \
	n=0; failed=; \
	while read -r pkg names; do \
		for name in $$names; do \
			n=$$((n+1)); \
			fuzz() { $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) "$$pkg" 2>&1; }; \
			tries=0; \
			while ! out=$$(fuzz); do \
				if [ $$tries -lt 3 ] && grep -q '^    context deadline exceeded$$' <<< "$$out" && ! grep -q 'Failing input written' <<< "$$out"; then \
					tries=$$((tries+1)); \
					echo "fuzz $$pkg $$name: Go's deadline race (golang/go#75804), no failing input: again ($$tries of 3)"; \
					continue; \
				fi; \
				echo "$$out"; echo "FAIL $$pkg $$name"; failed="$$failed $$pkg.$$name"; continue 2; \
			done; \
			execs=$$(echo "$$out" | sed -n 's/.*execs: \([0-9]*\).*/\1/p' | tail -1); \
			echo "fuzzed $$pkg $$name: $${execs:-?} execs in $(FUZZTIME)"; \
		done; \
	done <<< "$$targets"; \
	nfailed=$$(wc -w <<< "$$failed"); \
	echo "fuzz ($(FUZZTIME) each): $$((n - nfailed)) passed, $$nfailed failed"; \
	[ -z "$$failed" ] || { echo "failed:$$failed"; exit 1; }

# Speed figures reported in README.md. HEAL_KILLS guests are killed one
# after another in a real lab, at the server's default 5 s intervals and at
# the lab's 1 s; the test logs each kill-to-running time, the median, the
# floor (libvirt alone healing a guest of the same kind) and the ratio. A 6-node guest cluster is created in a lab of 6 hosts, three
# times. In a lab of three servers on etcd, the leader and a guest are
# SIGKILLed together HA_ROUNDS times: failover and heal times, median and max.
# The agent's resident memory at 500 domains: caretaker-agent beside
# `caretaker agent`, both real binaries scraped over HTTP through libvirtd.
HEAL_KILLS ?= 7
HA_ROUNDS ?= 10
bench:
	@bash deploy/setup.sh test
	$(GO) test -p 1 -run '^$$' -bench . -benchmem ./...
	$(GO) test -count=1 -run 'TestLabHeals' -v ./internal/lab -kills $(HEAL_KILLS) -interval 5s | grep -E 'heal|median|PASS|FAIL|ok'
	$(GO) test -count=1 -run 'TestLabHeals' -v ./internal/lab -kills $(HEAL_KILLS) -interval 1s | grep -E 'heal|median|PASS|FAIL|ok'
	$(GO) test -count=3 -run 'TestLabClusterCreate$$' -v ./internal/lab | grep -E 'cluster create:|PASS|FAIL|ok'
	$(GO) test -count=1 -run 'TestLabHAFailover$$' -v ./internal/lab -ha-rounds $(HA_ROUNDS) | grep -E 'failover:|PASS|FAIL|ok'
	$(GO) test -count=1 -run 'TestAgentRSS500$$' -v ./cmd/caretaker-agent -rss | grep -E 'agent rss|PASS|FAIL|ok'
	$(GO) test -count=1 -run 'TestMeasureScrape500|TestFrozenLibvirtd' -v ./internal/agent -measure | grep -E 'agent scrape:|first scrape with libvirtd stopped:|^(--- )?(PASS|FAIL)|^ok'

clean:
	rm -rf $(BIN)
