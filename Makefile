# tricaps: the two set-up commands on a fresh machine are `make demo` and `make test`.
SHELL := /bin/bash
NPM_STAMP := node_modules/.tricaps-installed

.PHONY: all install build test demo bench typecheck clean proto kernels mutation services format format-check

all: build

# Installs exactly what package-lock.json pins, once per lockfile change.
$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

install: $(NPM_STAMP)

build: $(NPM_STAMP)
	npx tsc -p tsconfig.json
	@chmod +x dist/cli.js

# TypeScript for proto/ (buf + ts-proto, grpc-js services); the output is committed, never edited.
proto: $(NPM_STAMP)
	npx buf lint
	rm -rf src/shared/gen
	npx buf generate

# WebAssembly kernels (src/coordinator/kernels/*.wat) into the TypeScript modules that carry their
# bytes; the output is committed, and a test fails when it lags its source.
kernels: $(NPM_STAMP)
	node scripts/assemble-kernels.mjs

# Mutation testing (StrykerJS) of the pure modules listed in stryker.config.json, judged by the unit
# tests: scores per module on stdout, the report in reports/mutation/index.html. Incremental: a
# rerun tests only mutants whose code or tests changed. About 2 hours from scratch on 2 cores, so
# not part of `make test` (`npx stryker run --mutate FILE,...` for a few modules).
# `node scripts/named-mutants.mjs` applies the hand-made changes of issue 18 one at a time and
# names the tests that catch each.
mutation: $(NPM_STAMP)
	npx stryker run

typecheck: $(NPM_STAMP)
	npx tsc -p tsconfig.json --noEmit

# prettier (.prettierrc.json); generated code is left as ts-proto writes it (.prettierignore).
FORMATTED := "src/**/*.ts" "test/**/*.ts"
format: $(NPM_STAMP)
	npx prettier --write $(FORMATTED)

format-check: $(NPM_STAMP)
	@npx prettier --check --log-level warn $(FORMATTED) || { echo "format-check: run 'make format' and commit" >&2; exit 1; }

# Tests run against real services: promtool (prometheus) and nats-server, installed from Debian
# when missing, and Mesa's lavapipe (a Vulkan driver on the CPU) so the webgpu engine's tests run
# on machines without a GPU (scripts/ensure-services.sh says what it changes).
services:
	@scripts/ensure-services.sh

# On Debian bookworm, where `services` installs lavapipe, the webgpu tests must run (they fail if the
# engine does not start); elsewhere they skip and say why.
REQUIRE_WEBGPU := $(shell grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release && echo 1)

test: build services format-check
	PATH="$$PATH:/usr/sbin" TRICAPS_REQUIRE_WEBGPU=$(REQUIRE_WEBGPU) npx vitest run

# The main job on the embedded default: SC TriCapsNet on the synthetic catalogue, trained by a local
# fleet (this process coordinates, 2 worker processes compute over gRPC on loopback), wasm engine,
# a few minutes on 2 cores, Recall@K before and after training. Settings that make a short run
# learn (see README, "Training notes"): mean routing pool, BN momentum 0.9, capsule margin loss,
# no augmentation.
DEMO_DIR := .demo
demo: build
	@test -f $(DEMO_DIR)/catalogue/Eval/list_eval_partition.txt || \
	  node dist/cli.js data synth --out $(DEMO_DIR)/catalogue --items 240 --categories 6 --views 4 --image-size 64 --seed 7 --force
	node dist/cli.js train --workers 2 --engine wasm --variant sc --image-size 64 --data $(DEMO_DIR)/catalogue \
	  --steps 120 --max-minutes 6 --mining random --routing-pool mean --bn-momentum 0.9 --margin-loss-weight 0.5 --no-augment \
	  --checkpoint-dir $(DEMO_DIR)/checkpoints
	node dist/cli.js search --checkpoint $(DEMO_DIR)/checkpoints --data $(DEMO_DIR)/catalogue --engine wasm -k 11 --mask oracle \
	  --query $(DEMO_DIR)/catalogue/$$(awk 'NR > 2 && $$3 == "query" { print $$1; exit }' $(DEMO_DIR)/catalogue/Eval/list_eval_partition.txt) \
	  --grid $(DEMO_DIR)/search.png

bench: build
	node dist/cli.js bench engine --engine wasm --variant sc --image-size 64 --batch-triplets 16 --steps 5

clean:
	rm -rf dist $(DEMO_DIR)
