"""Makes `pytest kernels` collect the kernel benchmarks and pick their cases.

With benchmarks enabled (`--benchmark-only`/`--benchmark-enable`) every full-size case runs;
otherwise (pyproject's addopts disable benchmarks) each kernel's smoke case runs once, as a
correctness test against the numpy reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chipbench.kernels.cases import kernel_cases

BACKENDS = ("numpy", "ort-cpu", "tvm-llvm", "tir")  # "tir": the hand-written schedules
TIR_KERNELS = ("gemm", "conv2d")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chipbench kernels")
    group.addoption("--kernel-tag", default=None, help="only cases with this tag (gemm, bert-base, deepbench, ...)")
    group.addoption("--kernel-backends", default=",".join(BACKENDS), help="comma-separated backends")
    group.addoption("--results-dir", default=None, help="where the device profile is (default: results/)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # `pytest kernels --benchmark-only` must work although addopts says --benchmark-disable;
    # this runs before pytest-benchmark reads its options (its configure hook is trylast).
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True


def benchmarks_enabled(config: pytest.Config) -> bool:
    return not config.getoption("benchmark_disable") or config.getoption("benchmark_enable")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    tag = config.getoption("kernel_tag")
    cases = kernel_cases(None if benchmarks_enabled(config) else "smoke")
    cases = [c for c in cases if tag is None or tag in c.tags]
    backends = [b for b in config.getoption("kernel_backends").split(",") if b]
    pairs = [(c, b) for c in cases for b in backends if b != "tir" or c.kernel in TIR_KERNELS]
    metafunc.parametrize(("case", "backend"), pairs, ids=[f"{c.name}-{b}" for c, b in pairs])


@pytest.fixture(scope="session")
def device_profile(pytestconfig: pytest.Config):
    """The saved ceilings for this machine (`chipbench probe`), or None."""
    from chipbench.probe import load_profile

    return load_profile(Path(pytestconfig.getoption("results_dir") or pytestconfig.rootpath / "results"))
