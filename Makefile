# chipbench: `make run` benchmarks the default suite and writes the report; `make test` tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
RESULTS ?= results
SUITE  ?= suites/default.toml
# what `make run` profiles and projects besides the suite (CI's smoke run takes smaller ones)
PROFILE_WORKLOADS ?= vibration-cnn1d,sensor-transformer
PROJECT_WORKLOAD  ?= edge-inspect
PROBE_FLAGS ?=
# ONNX conformance: the quick slice `make run` ends with (the operators of these workloads' graphs,
# exported by the suite by then) and the backends `make conformance` scores on the full suites
CONFORMANCE_WORKLOADS ?= defect-cnn,vibration-cnn1d,sensor-transformer,edge-inspect,rul-gru,rul-tcn,sensor-ae
CONFORMANCE_BACKENDS  ?= ort-cpu,tvm-llvm
# the production lines `make run` judges (chipbench fit) and the stacks it judges them on
REQUIREMENTS ?= requirements/vibration-gateway.toml requirements/camera-line.toml
FIT_BACKENDS ?= ort-cpu,tvm-llvm-tuned

.PHONY: install run report probe conformance test test-slow bench bench-kernels runtime-kit gpu-bundles gpu-check clean ship-weights

install: $(STAMP)

# torch comes first and pinned (constraints.txt): a loose range would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,tune,openvino]'
	touch $(STAMP)

# Ceilings once per machine, per-op breakdowns of two workloads, the suite (a cell the machine
# spoilt, NOISY, measured once more at the end), the deployment fit of each requirement (reusing
# the suite's Server and fixed-rate cells), the conformance slice of the workloads' operators,
# then the report.
run: $(STAMP)
	$(BIN)/chipbench probe --if-missing $(PROBE_FLAGS) --results-dir $(RESULTS)
	$(BIN)/chipbench profile -w $(PROFILE_WORKLOADS) -b ort-cpu,tvm-llvm --results-dir $(RESULTS) > /dev/null
	$(BIN)/chipbench project --hw edge-npu -w $(PROJECT_WORKLOAD) --precision int8 --results-dir $(RESULTS) > /dev/null
	$(BIN)/chipbench run --suite $(SUITE) --results-dir $(RESULTS) --no-report --retry-noisy 1
	$(BIN)/chipbench fit $(foreach r,$(REQUIREMENTS),--requirement $(r)) -b $(FIT_BACKENDS) --results-dir $(RESULTS) --no-report
	$(BIN)/chipbench conformance -w $(CONFORMANCE_WORKLOADS) -b $(CONFORMANCE_BACKENDS) --results-dir $(RESULTS)
	$(BIN)/chipbench report --results-dir $(RESULTS)

# ONNX's own backend tests (node and converted-model suites) on each ONNX backend, then the report
conformance: $(STAMP)
	$(BIN)/chipbench conformance --suite all -b $(CONFORMANCE_BACKENDS) --results-dir $(RESULTS)
	$(BIN)/chipbench report --results-dir $(RESULTS)

# Copy this machine's trained weights of the small workloads into results/weights/ (shipped).
ship-weights: $(STAMP)
	$(BIN)/python scripts/ship_weights.py

report: $(STAMP)
	$(BIN)/chipbench report --results-dir $(RESULTS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

probe: $(STAMP)
	$(BIN)/chipbench probe --results-dir $(RESULTS)

# pytest-benchmark over kernel case x backend; JSON works with `pytest-benchmark compare`
bench-kernels: $(STAMP)
	$(BIN)/chipbench probe --if-missing --results-dir $(RESULTS)
	nice -n 5 $(BIN)/python -m pytest -q kernels --benchmark-only --results-dir $(RESULTS) \
		--benchmark-json=$(RESULTS)/kernels.json
	$(BIN)/chipbench roofline $(RESULTS)/kernels.json --results-dir $(RESULTS)

bench: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not rpc" tests/bench --benchmark-enable --benchmark-only \
		--benchmark-json=$(RESULTS)/bench.json

# A runtime-only TVM and the bundle runner to carry to a device: make runtime-kit KIT_PYTHON=3.12
KIT ?= build/runtime-kit
KIT_PYTHON ?=
runtime-kit: $(STAMP)
	rm -rf $(KIT)
	$(BIN)/chipbench runtime-kit --out $(KIT) $(if $(KIT_PYTHON),--python $(KIT_PYTHON))

# The GPU check. Here: bundles (tvm-cuda for sm_90), the runtime kit for Python 3.12, wheels and
# weights into one folder to carry. There (plain python3, no venv): make gpu-check.
# GPU_DEVICE=cpu rehearses both on this machine (.gpu-check-cpu/, tvm-llvm, this Python).
GPU_DEVICE ?= cuda
GPU_PYTHON ?=
GPU_BUNDLES_FLAGS ?=
GPU_CHECK_FLAGS ?=
gpu-bundles: $(STAMP)
	$(BIN)/python scripts/gpu_bundles.py --device $(GPU_DEVICE) $(if $(GPU_PYTHON),--python $(GPU_PYTHON)) $(GPU_BUNDLES_FLAGS)

gpu-check:
	$(if $(filter cpu,$(GPU_DEVICE)),$(BIN)/python,python3) scripts/gpu_check.py $(if $(filter cpu,$(GPU_DEVICE)),--device cpu) $(GPU_CHECK_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
