import pytest

from chipbench.backends.base import Backend, backend_names, get_backend
from chipbench.workloads.base import get_workload, workload_names


def test_builtin_backends_are_registered_and_follow_the_protocol():
    names = backend_names()
    for name in ("ort-cpu", "tvm-llvm", "torch-eager", "torch-compile", "null"):
        assert name in names
        backend = get_backend(name)
        assert isinstance(backend, Backend)
        ok, reason = backend.available()
        assert isinstance(ok, bool) and isinstance(reason, str)
        assert ok or reason, f"{name} unavailable without a reason"


def test_plugins_register_through_the_environment():
    assert "crash-double" in backend_names()  # tests/doubles.py via CHIPBENCH_PLUGINS
    assert "tiny-mlp" in workload_names()


def test_unavailable_backend_says_why():
    ok, reason = get_backend("missing-double").available()
    assert not ok and "libfoo" in reason


def test_unknown_names_are_key_errors_listing_the_known_ones():
    with pytest.raises(KeyError, match="ort-cpu"):
        get_backend("no-such-backend")
    with pytest.raises(KeyError, match="defect-cnn"):
        get_workload("no-such-workload")


def test_first_three_workloads_describe_their_industrial_scenario():
    for name in ("defect-cnn", "vibration-cnn1d", "sensor-transformer"):
        info = get_workload(name).describe()
        assert info["name"] == name and len(info["scenario"]) > 20
