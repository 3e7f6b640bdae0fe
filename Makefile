# The README's commands. `make run` is the main job; `make test` is what CI runs.
DB  ?= duel.db
BIN := target/release/duel

.PHONY: run build models test lint bench-import bench-train

run: build models
	@test -f "$(DB)" || $(BIN) --db "$(DB)" import data/demo_pairs.jsonl
	$(BIN) --db "$(DB)" label

build:
	cargo build --release --locked

models:
	scripts/fetch-models.sh

test: models
	scripts/pyenv.sh
	cargo test --locked --all-targets

lint:
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

bench-import: build
	$(BIN) bench import --pairs 1000000

bench-train: build models
	$(BIN) bench train
