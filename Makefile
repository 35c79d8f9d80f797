# Thin wrapper around CMake; every target is idempotent.
BUILD    ?= build
JOBS     ?= $(shell nproc)
CMAKE    ?= cmake
CTEST_ARGS ?=

.PHONY: all deps build test unit integration demo drill install deb bench sanitize fuzz format clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/CMakeCache.txt:
	$(CMAKE) -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: deps $(BUILD)/CMakeCache.txt
	$(CMAKE) --build $(BUILD) -j$(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS) $(CTEST_ARGS)

unit: build
	cd $(BUILD) && ctest --output-on-failure -L unit

integration: build
	cd $(BUILD) && ctest --output-on-failure -L integration

demo: build
	MQPKI_BUILD=$(abspath $(BUILD)) bash scripts/demo.sh

# make install [PREFIX=/usr/local] [DESTDIR=/stage]: FHS paths (docs/operations.md).
PREFIX ?= /usr/local
install: build
	$(CMAKE) --install $(BUILD) --prefix $(PREFIX)

# Debian packages in $(BUILD)/deb/: mqpki, mqpki-broker-plugin, libmqpki-device,
# libmqpki-device-dev (packaging/Deb.cmake).
deb: build
	cd $(BUILD) && cpack -G DEB -B $(abspath $(BUILD))/deb

# Recovery drill (docs/operations.md): backup, loss of the CA host, restore elsewhere, campaign;
# prints the time of each phase. Also run by tests/integration/08-drill.sh.
drill: build
	MQPKI_BUILD=$(abspath $(BUILD)) bash scripts/drill.sh

# Benchmarks (docs/performance.md): installs its load tools, builds Release in build-bench,
# runs unattended (4-6 minutes on 2 cores), prints a table, writes bench/results/latest.json
# and docs/performance.md. Never part of `make test`.
BENCH_BUILD ?= build-bench
bench:
	@MQPKI_DEPS_EXTRA="golang-cfssl hyperfine" bash scripts/install-deps.sh
	$(CMAKE) -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release
	$(CMAKE) --build $(BENCH_BUILD) -j$(JOBS)
	bash bench/run.sh $(BENCH_BUILD)

# ASan + UBSan + LSan over every unit and integration test. Sanitizer reports of every process
# (also daemons and brokers the tests start and stop) go to build-sanitize/san-logs, named after
# the program and its pid (log_exe_name); any report, even an empty one (a process killed while
# it began to report), fails the target. Third-party leaks are suppressed in
# tests/sanitize/lsan.supp.
SAN_LOGS = $(CURDIR)/build-sanitize/san-logs
sanitize: deps
	$(CMAKE) -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DMQPKI_SANITIZE=ON
	$(CMAKE) --build build-sanitize -j$(JOBS)
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	cd build-sanitize && \
	  ASAN_OPTIONS=detect_leaks=1:log_path=$(SAN_LOGS)/asan:log_exe_name=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitize/lsan.supp:print_suppressions=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$(SAN_LOGS)/ubsan:log_exe_name=1 \
	  ctest --output-on-failure -j$(JOBS) $(CTEST_ARGS)
	@if [ -n "$$(ls -A $(SAN_LOGS))" ]; then for f in $(SAN_LOGS)/*; do \
	  echo "== $$f ($$(stat -c %s "$$f") bytes)"; cat "$$f"; done; \
	  echo "sanitize: reports in $(SAN_LOGS)"; exit 1; fi
	@echo "sanitize: clean"

# libFuzzer targets (tests/fuzz), clang + ASan + UBSan, each run FUZZ_SECONDS from the seeds.
FUZZ_SECONDS ?= 60
fuzz:
	MQPKI_DEPS_EXTRA="clang libclang-rt-dev $(MQPKI_DEPS_EXTRA)" bash scripts/install-deps.sh
	CC=clang $(CMAKE) -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMQPKI_SANITIZE=ON \
	  -DMQPKI_FUZZ=ON
	$(CMAKE) --build build-fuzz -j$(JOBS) --target fuzz_all
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh build-fuzz

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf $(BUILD) build-sanitize $(BENCH_BUILD) build-fuzz
