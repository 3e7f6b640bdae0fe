# The README's commands. `make run` is the main job; `make test` is what CI runs.
DB  ?= duel.db
BIN := target/release/duel

.PHONY: run build models test lint fuzz bench bench-import bench-train

run: build models
	@test -f "$(DB)" || $(BIN) --db "$(DB)" import data/demo_pairs.jsonl
	$(BIN) --db "$(DB)" label

build:
	cargo build --release --locked

models:
	scripts/fetch-models.sh

# The tests run beside a throwaway PostgreSQL server (scripts/with-postgres.sh
# installs Debian's postgresql package when missing).
test: models lint
	scripts/pyenv.sh
	DUEL_REQUIRE_PG=1 scripts/with-postgres.sh cargo test --locked --all-targets

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

# Coverage-guided fuzzing of every target in fuzz/ (stable toolchain, no
# sanitizer): FUZZ_TIME seconds each. Needs `cargo install cargo-fuzz` once.
FUZZ_TIME ?= 60
fuzz:
	cargo test --test fuzz -- --ignored write_seeds
	cd fuzz && for t in $$(cargo fuzz list); do \
	  mkdir -p corpus/$$t; \
	  cargo fuzz run --sanitizer none --debug-assertions $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(FUZZ_TIME) -rss_limit_mb=4096 || exit 1; \
	done

# Every speed benchmark and its baseline (PYTHON=... for the baselines), as the table
# of docs/PERFORMANCE.md.
bench:
	scripts/bench.sh

bench-import: build
	$(BIN) bench import --pairs 1000000

bench-train: build models
	$(BIN) bench train
