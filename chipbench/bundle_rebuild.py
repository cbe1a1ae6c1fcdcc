"""Weights too large to carry: left out of a bundle here, rebuilt on the device, checked there.

A ResNet-50's fp32 weights (~90 MiB) do not fit what may travel to a device, but they are
torch's seeded initialisation plus a few calibrated statistics. So a bundle may leave out its
weights over a size (`leave_out`, on the compiling host, from `chipbench.bundle.make_bundle`):

- the weights over `min_bytes` that the workload's seeded model reproduces are taken out of
  the backend's parameter file (the `.npz` its runtime entries name as `params`) and listed in
  the manifest's `left_out` with their `array_digest` (sha256 of dtype, shape and bytes) and
  the ONNX initializer they are; any other weight travels (a trained model's, a model file's);
- what the seed does not give travels as `state.npz`: the tensors `workload.build()` changed
  from `workload.seeded_model()` (for defect-cnn, the BatchNorm running statistics, 0.2 MiB),
  and the manifest's `rebuild` section holds the digest of every other (seeded) tensor;
- the rebuild is rehearsed at once, here, exactly as the device will run it: only what it
  reproduces is left out.

On the device (`rebuild`, or `python -m chipbench.bundle_rebuild BUNDLE...`, which needs torch
and onnx but no TVM): `seeded_model()`, each seeded tensor checked against the host's digest,
the carried state loaded over it, the model exported to ONNX as `chipbench.prepare` exports it,
and every left-out array looked up among the export's initializers by its digest and written
to `rebuilt/<file>` in the bundle (the runner checks each digest again when it loads them). An
array that is not reproduced bit for bit refuses the bundle with one line that names it.

Why this can be identical elsewhere (measured with torch 2.13 on an AMD EPYC, AVX-512):
seeded initialisation draws from torch's CPU generator (mt19937) through kernels that do not
depend on the thread count and agree between torch's AVX2 and AVX-512 builds (its no-SIMD
build draws differently: ATEN_CPU_CAPABILITY=default). BatchNorm calibration itself is not
reproducible (its reductions change with the thread count: 1 and 2 threads differ), which is
why its result travels. Another torch version may draw differently: the digests say so.

Folding BatchNorm into the convolutions (the exporter's `eval_peephole.cpp`: scale = gamma /
sqrt(var + eps), W' = W * scale, b' = beta - mean * scale) is not reproducible either: torch's
vectorized sqrt is not correctly rounded (on AVX-512 it differs from numpy's in the last bit),
so another torch or CPU folds other bits (torch 2.11 on an H200 host reproduced 1 of
defect-cnn's 53 folded weights). So each BatchNorm's `scale` travels too (`fold:<bn>` in
state.npz, 0.1 MiB for ResNet-50), and the device folds in numpy with the exporter's
operations, which are exactly rounded everywhere (a product, a difference); the rehearsal
here checks that this gives the exporter's bits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.bundle_format import (REBUILT, BundleError, array_digest, describe_array, left_out, load_arrays,
                                     read_npz, save_arrays, verify)
from chipbench.errors import one_line

STATE = "state.npz"
RECIPE = "seeded-weights"
FOLD = "fold:"  # state.npz's prefix for a BatchNorm's scale, gamma / sqrt(var + eps), as the host's torch computed it


class RebuildError(Exception):
    """An array cannot be left out (on the host) or rebuilt (on the device); one line naming it."""


def _state(model: Any) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def batchnorm_folds(model: Any) -> list[tuple[str, str]]:
    """(convolution, BatchNorm) module names where the BatchNorm reads a convolution's output and
    nothing else does: the pairs torch's ONNX exporter folds into one Conv. [] when torch.fx
    cannot trace the model."""
    import torch
    from torch import nn

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any tracing failure: the model's weights come from the export alone
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine and bn.track_running_stats:
            src = node.args[0]
            if (getattr(src, "op", None) == "call_module" and len(src.users) == 1
                    and isinstance(modules[src.target], nn.modules.conv._ConvNd)):
                pairs.append((src.target, node.target))
    return pairs


def _fold_scales(model: Any, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
    """Each BatchNorm's scale as the exporter computes it, with this torch (`bn_var.add(eps).sqrt()`,
    then `bn_scale.div(...)`, torch/csrc/jit/passes/onnx/eval_peephole.cpp)."""
    modules = dict(model.named_modules())
    scales = {}
    for _, bn in pairs:
        m = modules[bn]
        scales[FOLD + bn] = m.weight.detach().div(m.running_var.detach().add(m.eps).sqrt()).numpy()
    return scales


def _folded(state: dict[str, np.ndarray], scales: dict[str, np.ndarray], folds: list[dict[str, str]]) -> list[np.ndarray]:
    """The exporter's folded Conv weights and biases from the model's tensors and the carried
    scales, in numpy float32 with the exporter's operations in its order (each exactly rounded)."""
    arrays = []
    for fold in folds:
        conv, bn, scale = fold["conv"], fold["bn"], scales[FOLD + fold["bn"]]
        weight = state[f"{conv}.weight"]
        arrays.append(weight * scale.reshape(-1, *[1] * (weight.ndim - 1)))
        mean, beta = state[f"{bn}.running_mean"], state[f"{bn}.bias"]
        bias = state.get(f"{conv}.bias")
        arrays.append((bias - mean) * scale + beta if bias is not None else beta - mean * scale)
    return arrays


def _host() -> dict[str, str]:
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@dataclass(frozen=True)
class LeftOut:
    """What `leave_out` did: the manifest's additions ({"left_out", "rebuild"}, empty when it
    left nothing out), the files it wrote, and a note on the weights over the limit that
    still travel (and why), or None."""

    manifest: dict[str, Any]
    files: list[str]
    note: str | None = None


def leave_out(folder: Path, params_file: str, workload: Any, built: Any, onnx_path: Path, batch: int,
              min_bytes: int) -> LeftOut:
    """On the compiling host: take the weights of `folder/params_file` larger than `min_bytes`
    that the workload's seeded model reproduces out of it and write `state.npz` (see the
    module doc). `built` is the workload's torch model as compiled (its `build()`); `onnx_path`
    the ONNX file compiled. Weights it cannot rebuild travel: a model file's or a kernel's
    (`workload` None), a workload's without a seeded model, or one the rehearsed rebuild does
    not reproduce (e.g. converted to fp16). RebuildError when the seeded model does not fit
    the built one."""
    members = read_npz(folder / params_file)
    big = {m: a for m, a in members.items() if a.nbytes > min_bytes}
    if not big:
        return LeftOut({}, [])
    seeded_model = None if workload is None else workload.seeded_model()
    if seeded_model is None:
        who = f"{workload.name} offers no seeded model" if workload is not None else "not a workload's model"
        return LeftOut({}, [], f"{len(big)} weight(s) over {min_bytes} bytes travel: {who} to rebuild them from")
    seeded, final = _state(seeded_model), _state(built)
    if set(seeded) != set(final):
        raise RebuildError(f"{workload.name}: the seeded model's tensors are not the built model's")
    digests = {k: array_digest(v) for k, v in seeded.items()}
    state = {k: v for k, v in final.items() if array_digest(v) != digests[k]}
    pairs = batchnorm_folds(built)
    state.update(_fold_scales(built, pairs))
    recipe = {"recipe": RECIPE, "state": {"file": STATE, "names": list(state)},
              "seeded": {k: d for k, d in digests.items() if k not in state}, "host": _host(),
              "folds": [{"conv": conv, "bn": bn} for conv, bn in pairs]}
    pool = Pools().pool(workload, state, recipe, batch)  # the device's rebuild, rehearsed here
    names = _initializer_names(onnx_path)
    entries = {}
    for member, array in big.items():
        digest = array_digest(array)
        if digest in pool:
            entries[member] = {"sha256": digest, "dtype": str(array.dtype), "shape": list(array.shape),
                               "bytes": int(array.nbytes), "what": f"weight '{names[digest]}'" if digest in names else "weight"}
    travel = len(big) - len(entries)
    note = (f"{travel} weight(s) over {min_bytes} bytes travel: {workload.name}'s seeded model does not reproduce "
            f"them") if travel else None
    if not entries:
        return LeftOut({}, [], note)
    save_arrays(folder / STATE, state)
    kept = {m: a for m, a in members.items() if m not in entries}
    with open(folder / params_file, "wb") as f:
        np.savez(f, **kept)
    return LeftOut({"left_out": {params_file: entries}, "rebuild": recipe}, [STATE], note)


def _initializer_names(onnx_path: Path) -> dict[str, str]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    return {array_digest(numpy_helper.to_array(t)): t.name for t in model.graph.initializer}


@dataclass
class Pools:
    """Rebuilt weights by digest, one pool per (workload, carried state), exported at as many
    batches as needed: a workload's bundles at batch 1 and 32 share one export when their
    weights agree (they do: weights do not depend on the batch)."""

    pools: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    batches: dict[str, set[int]] = field(default_factory=dict)
    models: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (workload, rebuilt torch model)

    def pool(self, workload: Any, state: dict[str, np.ndarray], recipe: dict[str, Any], batch: int,
             wanted: set[str] = frozenset()) -> dict[str, np.ndarray]:
        """{digest: array} of the ONNX initializers of `workload`'s seeded model with `state`
        loaded over it, exported at `batch` unless an earlier export already holds `wanted`.
        RebuildError naming the first seeded tensor that differs from the host's digest."""
        key = json.dumps([workload.key(), {k: array_digest(v) for k, v in state.items()}], sort_keys=True, default=str)
        pool = self.pools.setdefault(key, {})
        done = self.batches.setdefault(key, set())
        if batch in done or (done and wanted and wanted <= set(pool)):
            return pool
        model, arrays = _export_pool(workload, state, recipe, batch)
        pool.update(arrays)
        done.add(batch)
        self.models[key] = (workload, model)
        return pool

    def write_weights(self, folder: Path) -> list[Path]:
        """Give each rebuilt model's weights to `folder` (laid out as the weights cache, see
        chipbench.workloads.training.carried_weights): a `.pt` beside each `.key.json` there
        that names the same workload and has none. Returns the files written."""
        import torch

        written = []
        for workload, model in self.models.values():
            want = json.dumps(workload.key(), sort_keys=True, default=list)
            for kpath in sorted((Path(folder) / workload.name).glob("*.key.json")):
                wpath = kpath.with_name(kpath.name.removesuffix(".key.json") + ".pt")
                try:
                    key = json.loads(kpath.read_text())["key"]
                except (OSError, ValueError, KeyError):
                    continue
                if wpath.exists() or json.dumps(key.get("workload"), sort_keys=True, default=list) != want:
                    continue
                torch.save(model.state_dict(), wpath)
                written.append(wpath)
        return written


def _export_pool(workload: Any, state: dict[str, np.ndarray], recipe: dict[str, Any],
                 batch: int) -> tuple[Any, dict[str, np.ndarray]]:
    import torch
    from onnx import numpy_helper

    from chipbench.prepare import onnx_proto

    model = workload.seeded_model()
    if model is None:
        raise RebuildError(f"{workload.name} offers no seeded model here (Workload.seeded_model)")
    scales = {k: v for k, v in state.items() if k.startswith(FOLD)}
    state = {k: v for k, v in state.items() if k not in scales}
    seeded = _state(model)
    expected = set(recipe["seeded"]) | set(state)
    if set(seeded) != expected:
        raise RebuildError(f"{workload.name}: the seeded model here has other tensors than the compiling host's "
                           f"({len(seeded)} here, {len(expected)} there)")
    for name, digest in recipe["seeded"].items():
        if array_digest(seeded[name]) != digest:
            here, there = _host(), recipe.get("host", {})
            raise RebuildError(f"{workload.name}: seeded weight '{name}' {list(seeded[name].shape)} differs from the "
                               f"compiling host's (torch {here['torch']} here, {there.get('torch')} there; CPU "
                               f"capability {here['cpu_capability']} here, {there.get('cpu_capability')} there)")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=False)
    model.requires_grad_(False)
    proto = onnx_proto(workload, model.eval(), batch)
    arrays = [numpy_helper.to_array(t) for t in proto.graph.initializer]
    arrays += _folded(_state(model), scales, recipe.get("folds", []))
    return model, {array_digest(a): a for a in arrays}


@dataclass(frozen=True)
class Rebuilt:
    """What `rebuild` made in a bundle: arrays and bytes written to rebuilt/, seconds taken."""

    folder: Path
    arrays: int
    bytes: int
    seconds: float


def rebuild(folder: Path, pools: Pools | None = None) -> Rebuilt:
    """On the device: rebuild every array the bundle in `folder` left out and write them to
    `folder/rebuilt/<file>`. BundleError when a bundle file does not match its manifest;
    RebuildError naming the first array that is not reproduced exactly (nothing is written
    for that bundle then)."""
    from chipbench.workloads.base import get_workload

    start = time.perf_counter()
    folder = Path(folder)
    manifest, _ = verify(folder)
    missing = left_out(manifest)
    if not missing:
        return Rebuilt(folder, 0, 0, time.perf_counter() - start)
    recipe = manifest.get("rebuild") or {}
    if recipe.get("recipe") != RECIPE:
        raise RebuildError(f"{folder}: rebuild recipe {recipe.get('recipe')!r} is not one this chipbench knows ({RECIPE})")
    cell = manifest["cell"]
    try:
        workload = get_workload(cell["workload"], **cell.get("workload_params", {}))
    except (KeyError, TypeError) as exc:
        raise RebuildError(f"{folder}: workload {cell['workload']!r} cannot be made here ({exc})") from None
    state = load_arrays(folder / recipe["state"]["file"], recipe["state"]["names"])
    wanted = {e["sha256"] for members in missing.values() for e in members.values()}
    pool = (pools or Pools()).pool(workload, state, recipe, int(manifest["batch"]), wanted)
    out = folder / REBUILT
    absent = [(name, member, entry) for name, members in missing.items() for member, entry in members.items()
              if entry["sha256"] not in pool]
    if absent:
        name, member, entry = absent[0]
        here, there = _host(), recipe.get("host", {})
        others = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise RebuildError(f"{folder.name}: array {describe_array(member, entry)} of {name}{others} of the "
                           f"{sum(map(len, missing.values()))} left out {'are' if others else 'is'} not reproduced "
                           f"here (sha256 {entry['sha256'][:16]}... found in no rebuilt weight; torch "
                           f"{here['torch']} here, {there.get('torch')} on the compiling host)")
    written = [(name, {member: pool[entry["sha256"]] for member, entry in members.items()})
               for name, members in missing.items()]
    out.mkdir(exist_ok=True)
    for name, arrays in written:
        tmp = out / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(out / name)
    total = sum(a.nbytes for _, arrays in written for a in arrays.values())
    return Rebuilt(folder, sum(len(a) for _, a in written), total, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    """`python -m chipbench.bundle_rebuild BUNDLE... [--json FILE] [--weights-dir DIR]`: one
    line per bundle on stderr; exit 0 when every bundle has what it needs, 1 when one was refused."""
    p = argparse.ArgumentParser(prog="python -m chipbench.bundle_rebuild",
                                description="Rebuild the weights bundles left out, from their seeded models.")
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--json", type=Path, help="also write {bundle: {status, arrays, bytes, seconds, reason}} here")
    p.add_argument("--weights-dir", type=Path, help="also give the rebuilt models' weights to this carried-weights "
                                                    "folder (CHIPBENCH_CARRIED_WEIGHTS), beside their .key.json")
    args = p.parse_args(argv)
    pools, results = Pools(), {}
    for folder in args.bundles:
        try:
            made = rebuild(folder, pools)
            results[str(folder)] = {"status": "rebuilt" if made.arrays else "complete", "arrays": made.arrays,
                                    "bytes": made.bytes, "seconds": round(made.seconds, 2), "reason": None}
            print(f"{results[str(folder)]['status']} {folder}: {made.arrays} array(s), {made.bytes / 2**20:.1f} MiB "
                  f"in {made.seconds:.1f} s", file=sys.stderr)
        except Exception as exc:  # BundleError, RebuildError, or the export failing here: that bundle only
            reason = str(exc) if isinstance(exc, (BundleError, RebuildError)) else f"rebuild: {one_line(exc)}"
            results[str(folder)] = {"status": "refused", "reason": reason}
            print(f"refused {folder}: {reason}", file=sys.stderr)
    if args.weights_dir:
        for path in pools.write_weights(args.weights_dir):
            print(f"weights {path}: the rebuilt model's, for the torch backends", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if any(r["status"] == "refused" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
