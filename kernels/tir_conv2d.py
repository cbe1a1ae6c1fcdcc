"""A hand-scheduled FP32 conv2d in TVM TensorIR, the GEMM recipe carried over to convolution.

Takes the ONNX layouts (input NCHW, weights OIHW, bias) and computes the convolution as an
implicit GEMM over (output pixels) × (output channels) × (Cin·kh·kw):

1. Re-layout the padded input to NHWC: the input channel, the innermost reduction axis, becomes
   contiguous, and padding becomes data (no bounds checks in the hot loop).
2. Pack the weights into [Cout/nr, kh, kw, Cin, nr] panels (zero-padded): one contiguous
   nr-wide vector per reduction step, as packed B is for the GEMM.
3. Register block: mr output pixels along a row × nr output channels (2 zmm per pixel),
   broadcasting one input value per pixel per step; accumulate in a local tile.
4. Write the tile to the NCHW output with the bias added, once.
5. Parallelise over (batch, channel block, output row).

Both re-layouts run on every call, because the ONNX cases pass the weights as inputs; a
deployment would pack constant weights once. Where spatial size is small and weights large
(ResNet res5: 7×7 pixels, 9.4 MB of weights) the packing is a large share of the time.
Run `python -m chipbench.kernels.tir_conv2d` to compare with ONNX Runtime on the ResNet convs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ConvShape:
    n: int
    c: int
    h: int
    w: int
    co: int
    k: int
    stride: int = 1
    pad: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple((d + 2 * self.pad - self.k) // self.stride + 1 for d in (self.h, self.w))


def conv2d_func(s: ConvShape, nr: int) -> Any:
    from tvm import te, tirx

    x = te.placeholder((s.n, s.c, s.h, s.w), name="X")
    w = te.placeholder((s.co, s.c, s.k, s.k), name="W")
    b = te.placeholder((s.co,), name="B")
    oh, ow = s.out_hw
    hp, wp = s.h + 2 * s.pad, s.w + 2 * s.pad
    zero = tirx.const(0, "float32")

    def padded(n, y, xx, c):
        inside = tirx.all(y >= s.pad, y < s.h + s.pad, xx >= s.pad, xx < s.w + s.pad)
        return tirx.if_then_else(inside, x[n, c, y - s.pad, xx - s.pad], zero)

    xp = te.compute((s.n, hp, wp, s.c), padded, name="Xp")
    wpk = te.compute(
        ((s.co + nr - 1) // nr, s.k, s.k, s.c, nr),
        lambda p, ry, rx, c, j: tirx.if_then_else(p * nr + j < s.co, w[p * nr + j, c, ry, rx], zero),
        name="Wp",
    )
    rc, ry, rx = te.reduce_axis((0, s.c), "rc"), te.reduce_axis((0, s.k), "ry"), te.reduce_axis((0, s.k), "rx")
    acc = te.compute(
        (s.n, oh, ow, s.co),
        lambda n, y, xx, o: te.sum(
            xp[n, y * s.stride + ry, xx * s.stride + rx, rc] * wpk[o // nr, ry, rx, rc, o % nr], axis=[ry, rx, rc]),
        name="acc",
    )
    out = te.compute((s.n, s.co, oh, ow), lambda n, o, y, xx: acc[n, y, xx, o] + b[o], name="Y")
    return te.create_prim_func([x, w, b, out])


def pick_tiles(s: ConvShape) -> tuple[int, int]:
    """nr: 32 channels (2 zmm) when Cout allows, else 16; mr: the largest of 8..4 that divides the
    output width, so no pixel tile is ragged (8 when none does)."""
    nr = 32 if s.co % 32 == 0 else 16
    ow = s.out_hw[1]
    mr = next((m for m in (8, 7, 6, 5, 4) if ow % m == 0), 8)
    return mr, nr


def schedule_conv2d(s: ConvShape) -> Any:
    from tvm import s_tir

    mr, nr = pick_tiles(s)
    sch = s_tir.Schedule(conv2d_func(s, nr))
    acc = sch.get_sblock("acc")
    n, y, x, o, ry, rx, rc = sch.get_loops(acc)
    x_out, x_reg = sch.split(x, [None, mr])
    o_out, o_reg = sch.split(o, [None, nr])
    sch.reorder(n, o_out, y, x_out, ry, rx, rc, x_reg, o_reg)  # weight panel outer, registers inner
    sch.set_scope(acc, 0, "local")  # the tile lives in registers...
    out = sch.get_sblock("Y")
    sch.reverse_compute_at(out, x_out)  # ...and reaches Y (NCHW, + bias) once per tile
    sch.vectorize(o_reg)
    sch.unroll(x_reg)
    sch.parallel(sch.fuse(n, o_out, y))
    sch.decompose_reduction(acc, ry)
    sch.vectorize(sch.get_loops(out)[-1])  # mr pixels of one channel are contiguous in NCHW
    # The layout transforms, parallel over two outer loops. The weight loops run (panel, cin,
    # ky, kx, cout) so the nr rows of W a panel gathers from stay in L1 across ky, kx.
    xp = sch.get_loops(sch.get_sblock("Xp"))
    sch.parallel(sch.fuse(*xp[:2]))
    p, ky, kx, c, j = sch.get_loops(sch.get_sblock("Wp"))
    sch.reorder(p, c, ky, kx, j)
    sch.parallel(sch.fuse(p, c))
    return sch.mod


def build_conv2d(s: ConvShape, target: Any = None) -> Any:
    import tvm

    from chipbench.backends.tvm import host_target, use_all_cores

    use_all_cores()
    return tvm.compile(schedule_conv2d(s), target=target or host_target())


def run_conv2d(exe: Any, s: ConvShape, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    import tvm

    dev = tvm.cpu()
    y = tvm.runtime.empty((s.n, s.co, *s.out_hw), "float32", dev)
    exe["main"](*(tvm.runtime.tensor(a, dev) for a in (x, w, b)), y)
    return y.numpy()


def shape_of(case: Any) -> ConvShape:
    """The ConvShape of a `conv2d` KernelCase (groups of 1)."""
    p = case.params
    if case.kernel != "conv2d" or p["group"] != 1:
        raise ValueError(f"{case.name}: the TIR conv2d handles plain (group 1) conv2d only")
    return ConvShape(p["N"], p["C"], p["HW"], p["HW"], p["K"], p["kernel"], p["stride"], p["pad"])


def compare(case: Any, rounds: int = 5, per_core: bool = False) -> dict[str, float]:
    """GFLOP/s of this schedule and ONNX Runtime on a conv2d KernelCase (see `tir_gemm.compare`)."""
    import time

    import tvm

    from chipbench.backends.base import CompileSpec, get_backend
    from chipbench.kernels.timing import SINGLE_THREAD_HINT, best_seconds, single_thread_env

    if per_core and not single_thread_env():
        raise RuntimeError(SINGLE_THREAD_HINT)
    s = shape_of(case)
    inputs = case.make_inputs()
    exe = build_conv2d(s)
    if case.error(run_conv2d(exe, s, inputs["X"], inputs["W"], inputs["B"]), case.ref(**inputs)) > case.tolerance:
        raise AssertionError(f"TIR conv2d disagrees with numpy on {case.name}")
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(inputs[n], dev) for n in ("X", "W", "B")]
    args.append(tvm.runtime.empty(case.output, "float32", dev))
    ort = get_backend("ort-cpu").compile(case.source(), CompileSpec(threads=1 if per_core else None))
    best = best_seconds({"tir": lambda: exe["main"](*args), "ort": lambda: ort.run(inputs)}, rounds,
                        clock=time.thread_time if per_core else time.perf_counter)
    return {name: case.flops / s / 1e9 for name, s in best.items()}


if __name__ == "__main__":  # python -m chipbench.kernels.tir_conv2d [--per-core]: the ResNet convs
    import sys

    from chipbench.kernels.cases import kernel_cases

    for case in kernel_cases("conv2d"):
        result = compare(case, per_core="--per-core" in sys.argv)
        print(f"{case.name:32s}", "  ".join(f"{k} {v:6.1f}" for k, v in result.items()), "GFLOP/s")
