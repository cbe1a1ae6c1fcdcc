"""How a suite spreads over a fleet: cells of one RPC key in flight as many as it has servers,
local cells one at a time and in order (no clocks: events and counters only)."""

import threading

import pytest

from chipbench.fleet import fleet_key, spread
from chipbench.suite import Cell


def cells(device, n, start=0):
    return [Cell("tiny-mlp", "tvm-llvm", seed=start + i, device=device) for i in range(n)]


class Recorder:
    """run_one for spread(): counts cells in flight; RPC cells wait until `width` are in flight
    together (a barrier), so a fleet that ran fewer at once would fail instead of passing slowly."""

    def __init__(self, width):
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.order = []
        self.barrier = threading.Barrier(width) if width > 1 else None

    def __call__(self, cell):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.order.append(cell.seed)
        if cell.device and cell.device.startswith("rpc") and self.barrier is not None:
            try:
                self.barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass  # the last, smaller round of a group
        with self.lock:
            self.now -= 1
        return f"record {cell.seed}"


def test_cells_of_a_key_run_as_many_at_once_as_it_has_servers():
    suite = cells("rpc://127.0.0.1:9190/board", 4)
    run = Recorder(width=2)
    done = list(spread(suite, run, width_of=lambda key: 2 if key else 1))
    assert sorted(c.seed for c, _ in done) == [0, 1, 2, 3]
    assert all(rec == f"record {c.seed}" for c, rec in done)
    assert run.peak == 2


def test_local_cells_run_one_at_a_time_in_order_around_a_fleet_group():
    suite = cells(None, 2) + cells("rpc://127.0.0.1:9190/board", 3, start=10) + cells("cpu", 2, start=20)
    run = Recorder(width=3)
    widths = []

    def width_of(key):
        widths.append(key)
        return 3 if key else 1

    done = [c.seed for c, _ in spread(suite, run, width_of=width_of)]
    assert done[:2] == [0, 1] and sorted(done[2:5]) == [10, 11, 12] and done[5:] == [20, 21]
    assert widths == [None, ("127.0.0.1", 9190, "board"), None]
    assert run.peak == 3


def test_a_key_with_one_server_runs_its_cells_in_order():
    suite = cells("rpc://127.0.0.1:9190/board", 3)
    run = Recorder(width=1)
    assert [c.seed for c, _ in spread(suite, run, width_of=lambda key: 1)] == [0, 1, 2]
    assert run.peak == 1


@pytest.mark.parametrize("device, key", [(None, None), ("cpu", None), ("cuda:1", None), ("rpc://h:1/k", ("h", 1, "k")),
                                         ("nonsense", None)])
def test_fleet_key(device, key):
    assert fleet_key(Cell("w", "b", device=device)) == key
