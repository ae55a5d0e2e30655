# The two commands: `make run` and `make test`. Both install what is missing
# (scripts/setup.sh, apt-get as root), configure, build, then run.
BUILD ?= build
BUILD_ARM64 ?= build-aarch64
BUILD_SIMDE ?= build-simde
JOBS ?= 2
CMAKE_FLAGS ?=
# CI=true turns warnings into errors.
WERROR := $(if $(filter true 1,$(CI)),ON,OFF)
HOST_ARCH := $(shell uname -m)

.PHONY: all setup configure build run test test-native test-arm64 test-simde test-asan test-tsan fuzz check bench install clean

all: build

# Debian packages, the test venv (~/.cache/heed/venv) and the two real models
# (~/.cache/heed/models). A model that cannot be downloaded is recorded in
# FETCH_FAILED there: the tests that need it skip, printing why.
setup:
	@bash scripts/setup.sh
	@bash scripts/setup-python.sh
	@bash scripts/fetch-models.sh

configure: setup
	@cmake -S . -B $(BUILD) -DHEED_WERROR=$(WERROR) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j $(JOBS)

# The main job: what heed sees on this machine, then `heed serve` with the
# default model (fetched by setup if missing) on 127.0.0.1:8080 until Ctrl-C,
# after printing how to call it. PORT, SERVE_FLAGS change it.
MODELS ?= $(or $(HEED_MODELS),$(HOME)/.cache/heed/models)
DEFAULT_MODEL := $(MODELS)/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
PORT ?= 8080
SERVE_FLAGS ?=
run: build
	$(BUILD)/heed info
	@if [ ! -f $(DEFAULT_MODEL) ]; then \
	  echo "make run: $(DEFAULT_MODEL) is absent: $$(cat $(MODELS)/FETCH_FAILED 2>/dev/null)"; exit 1; fi
	@bash scripts/serve-howto.sh $(PORT)
	exec $(BUILD)/heed serve $(DEFAULT_MODEL) --host 127.0.0.1 --port $(PORT) $(SERVE_FLAGS)

# On x86-64 the arm64 build (NEON) runs under qemu too (HEED_NO_ARM64=1 skips
# it), and so do the AVX-512 kernels through SIMDe.
TEST_TARGETS := test-native
ifeq ($(HOST_ARCH),x86_64)
TEST_TARGETS += test-simde
ifneq ($(HEED_NO_ARM64),1)
TEST_TARGETS += test-arm64
endif
endif
# Every suite runs, whatever the one before it did; the run fails at the end.
test:
	@MAKE="$(MAKE)" bash scripts/run-suites.sh $(TEST_TARGETS)

test-native: build
	cd $(BUILD) && ctest -j $(JOBS) --output-on-failure

# NEON kernels and the whole suite for arm64, cross-built and run under qemu-aarch64.
test-arm64: setup
	@cmake -S . -B $(BUILD_ARM64) -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
	  -DHEED_ARM64_DEPS=$(CURDIR)/.deps/arm64 -DHEED_BUILD_TOOLS=OFF -DHEED_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD_ARM64) -j $(JOBS)
	cd $(BUILD_ARM64) && ctest -j $(JOBS) --output-on-failure --repeat after-timeout:2

# The AVX-512 kernels compiled a second time against SIMDe (portable code under
# the same intrinsics' names) in a test build where the CPU counts as having
# AVX-512 F/BW/VL/VNNI/BF16: the kernel, attention, weights, speculative and
# bench (probes) suites run the avx512 level, VNNI and BF16 code included, on
# a machine without it (CMakeLists.txt, HEED_AVX512_SIMDE). Where the CPU has
# AVX-512, the native suite runs the real instructions too.
SIMDE_SUITES := kernels attention weights spec bench
test-simde: setup
	@cmake -S . -B $(BUILD_SIMDE) -DHEED_AVX512_SIMDE=ON -DHEED_BUILD_TOOLS=OFF \
	  -DHEED_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD_SIMDE) -j $(JOBS) --target $(addprefix test_,$(SIMDE_SUITES))
	cd $(BUILD_SIMDE) && ctest -j $(JOBS) --output-on-failure -R '^($(shell echo $(SIMDE_SUITES) | tr ' ' '|'))$$'

# The checked builds, each in a build folder of its own (build-asan, build-tsan,
# build-fuzz); `make check` runs the suite and all three, as .ci/run does.
# ASan + UBSan over the whole suite; any report from heed's code fails it,
# leaks found when a test's process exits included (tests/lsan.supp: third parties).
test-asan: setup
	@bash scripts/test-asan.sh
# ThreadSanitizer over a stress program (Criterion cannot start under TSan).
test-tsan: setup
	@bash scripts/test-tsan.sh
# libFuzzer targets (clang, ASan + UBSan), FUZZ_SECONDS (default 30) each.
fuzz: setup
	@bash scripts/fuzz.sh
check:
	@MAKE="$(MAKE)" bash scripts/run-suites.sh test test-asan test-tsan fuzz

# Probes, then decode (4k..96k) and prefill beside them, with the oneDNN baseline.
bench: build
	$(BUILD)/heed bench all --json $(BUILD)/bench.json --plot $(BUILD)/bench.png

install: build
	cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX))

clean:
	rm -rf $(BUILD) $(BUILD_ARM64) $(BUILD_SIMDE) build-asan build-tsan build-fuzz
