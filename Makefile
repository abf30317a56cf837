# caretaker — see README.md. `make run` starts the lab, `make test` runs
# every test.
GO      ?= go
BIN     := bin
PROMTOOL ?= promtool
GOFILES := $(shell find . -name '*.go' -not -path './.git/*')

.PHONY: all build run test lint rules-test bench clean

all: build

build:
	$(GO) build -o $(BIN)/caretaker ./cmd/caretaker
	$(GO) build -o $(BIN)/runbook ./cmd/runbook

# Starts the embedded default: a server and two hosts' agents with guests.
# As root it first installs and starts libvirtd and QEMU if needed
# (deploy/lab/setup.sh); CARETAKER_NO_INSTALL=1 skips the install.
run: build
	@bash deploy/lab/setup.sh
	@echo "runbook is at ./$(BIN)/runbook (try: ./$(BIN)/runbook status)"
	./$(BIN)/caretaker lab $(ARGS)

lint:
	@out=$$(gofmt -l $(GOFILES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

rules-test:
	$(PROMTOOL) check rules alerts/*.rules.yml
	$(PROMTOOL) test rules alerts/tests/*.test.yml

test: lint rules-test
	# -p 1: the tests that start real QEMU guests (kvm, dashboards, lab) share one
	# libvirtd and two cores; run one package at a time so none starves.
	$(GO) test -count=1 -p 1 -timeout 15m ./...

# Speed figures reported in README.md. HEAL_KILLS guests are killed one
# after another in a real lab; the test logs each kill-to-running time and
# the median. A 6-node guest cluster is created in a lab of 6 hosts, three
# times.
HEAL_KILLS ?= 7
bench:
	$(GO) test -p 1 -run '^$$' -bench . -benchmem ./...
	$(GO) test -count=1 -run 'TestLabHeals' -v ./internal/lab -kills $(HEAL_KILLS) | grep -E 'heal|median|PASS|FAIL|ok'
	$(GO) test -count=3 -run 'TestLabClusterCreate$$' -v ./internal/lab | grep -E 'cluster create:|PASS|FAIL|ok'

clean:
	rm -rf $(BIN)
