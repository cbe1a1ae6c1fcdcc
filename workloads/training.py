"""Train-at-first-use with an exact-key weight cache under cache_dir("weights", workload).

A trained model's weights are a function of the workload key (name, version, fields), the
training recipe (optimizer, epochs, lr, batch, train size), the data generator's identity
(name, version, parameters, seed) and the torch version. The key is stored as JSON beside the
weights and compared exactly; a file lock keeps concurrent processes from training the same
model twice.

Before training, two sources are asked in this order, and the stored info says which gave the
weights:
- weights carried from another machine (`CHIPBENCH_CARRIED_WEIGHTS`, a folder laid out as this
  cache is, e.g. by `scripts/gpu_bundles.py`), used when their key equals this one but for the
  torch version: a device then measures the very weights its bundles were compiled with, and
  does not spend its time training;
- the weights shipped in the source tree (`results/weights/<workload>/`, `make ship-weights`),
  used only when their whole key equals this one, torch version included: a fresh clone then
  skips about 12 of the 14 minutes of training on 2 cores, and a changed recipe, generator or torch
  retrains as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from chipbench.paths import atomic_write_bytes, atomic_write_text, cache_dir


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Fixed seeds for the duration. The CPU kernels used here (conv, matmul, RNN) are
    deterministic for a given thread count, so `torch.use_deterministic_algorithms` is not
    switched on: on CPU it mainly swaps in slower paths (a GRU trains ~5x slower). The thread
    count is stored with the trained weights."""
    torch.manual_seed(seed)
    yield


def data_key(workload: Any) -> dict[str, Any] | None:
    """The identity of the data the weights were fitted on (generator name, version, params,
    seed), so a changed generator retrains instead of reusing stale weights."""
    src = workload.data_source()
    if src is None:
        return None
    return {"generator": src.name, "version": src.version, "params": src.params, "seed": src.seed}


def cached_weights(workload: Any, recipe: str, model: nn.Module,
                   fit: Callable[[nn.Module], dict[str, Any]]) -> nn.Module:
    """Load `model`'s trained weights from the cache, or run `fit(model)` (which trains in
    place and returns a small info dict, stored beside the weights) and cache them."""
    key = {"workload": workload.key(), "recipe": recipe, "data": data_key(workload),
           "torch": torch.__version__.split("+")[0]}
    text = json.dumps(key, sort_keys=True, default=list)
    folder = cache_dir("weights", workload.name)
    stem = hashlib.sha256(text.encode()).hexdigest()[:24]
    wpath, kpath = folder / f"{stem}.pt", folder / f"{stem}.key.json"

    def load() -> bool:
        if not (wpath.exists() and kpath.exists()):
            return False
        try:
            stored = json.loads(kpath.read_text())
            if json.dumps(stored["key"], sort_keys=True, default=list) != text:
                return False
            state = torch.load(io.BytesIO(wpath.read_bytes()), weights_only=True)
            model.load_state_dict(state)
            return True
        except (OSError, ValueError, KeyError, RuntimeError):
            return False

    if not load():
        with open(folder / f"{stem}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not load():  # another process may have finished while we waited
                # carried first: a device must measure the very weights its bundles were built with
                info = (carried_weights(workload.name, key, model)
                        or keyed_weights(shipped_root(), workload.name, key, model, exact=True))
                if info is None:
                    t0, c0 = time.perf_counter(), time.process_time()
                    print(f"chipbench: preparing {workload.name} weights ({recipe}), once; cache {folder}",
                          file=sys.stderr)
                    info = fit(model)
                    info["train_s"] = round(time.perf_counter() - t0, 2)
                    info["train_cpu_s"] = round(time.process_time() - c0, 2)
                    info["threads"] = torch.get_num_threads()
                print(f"chipbench: {workload.name} ready: {info}", file=sys.stderr)
                buf = io.BytesIO()
                torch.save(model.state_dict(), buf)
                atomic_write_bytes(wpath, buf.getvalue())
                atomic_write_text(kpath, json.dumps({"key": key, "info": info}, indent=1,
                                                    sort_keys=True, default=list))
    model.requires_grad_(False)
    return model.eval()


def shipped_root() -> Path:
    """`results/weights/` in the source tree: trained weights that ship with chipbench."""
    return Path(__file__).resolve().parent.parent / "results" / "weights"


def carried_weights(name: str, key: dict[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """Load weights carried from another machine into `model` (`$CHIPBENCH_CARRIED_WEIGHTS`,
    any torch version: see `keyed_weights`); None when the variable is unset or nothing fits."""
    root = os.environ.get("CHIPBENCH_CARRIED_WEIGHTS")
    return keyed_weights(Path(root), name, key, model, exact=False) if root else None


def keyed_weights(root: Path, name: str, key: dict[str, Any], model: nn.Module,
                  exact: bool) -> dict[str, Any] | None:
    """Load into `model` the first weights under `root/<name>/` (a `*.key.json` with its `.pt`
    state dict, as this cache lays them out) whose key equals `key`: wholly when `exact`, else
    in all but the torch version. Returns their stored info, marked `carried` or `shipped`
    with the folder and the torch version that made them; None when nothing there fits."""
    ignored = () if exact else ("torch",)
    want = json.dumps({k: v for k, v in key.items() if k not in ignored}, sort_keys=True, default=list)
    for kpath in sorted((Path(root) / name).glob("*.key.json")):
        try:
            stored = json.loads(kpath.read_text())
            if json.dumps({k: v for k, v in stored["key"].items() if k not in ignored}, sort_keys=True,
                          default=list) != want:
                continue
            wpath = kpath.with_name(kpath.name.removesuffix(".key.json") + ".pt")
            state = torch.load(io.BytesIO(wpath.read_bytes()), weights_only=True)
            current = model.state_dict()
            if set(state) != set(current) or any(state[k].shape != current[k].shape for k in current):
                continue  # checked first: a failed load_state_dict may have copied some tensors
            model.load_state_dict(state)
        except (OSError, ValueError, KeyError, RuntimeError, AttributeError):
            continue
        how = "shipped" if exact else "carried"
        return {**stored.get("info", {}), how: str(kpath.parent), "made_with_torch": stored["key"].get("torch")}
    return None


def train_cached(workload: Any, model: nn.Module, loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
                 *, epochs: int, lr: float, batch_size: int = 64, weight_decay: float = 1e-4,
                 train_data: Callable[[], tuple[list[np.ndarray], np.ndarray]] | None = None,
                 recipe_version: str = "1") -> nn.Module:
    """Train `model` on the workload's train split (or `train_data()`) at first use, with the
    whole recipe (optimizer, epochs, lr, batch, train size) in the cache key, then evaluate
    the task metric on the test split and store it with the weights."""
    recipe = {"optimizer": "adamw-onecycle", "version": recipe_version, "epochs": epochs,
              "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
              "n_train": workload.split_sizes["train"]}
    text = json.dumps(recipe, sort_keys=True)

    def run(m: nn.Module) -> dict[str, Any]:
        if train_data is None:
            x, y = workload.dataset("train")
            xs = [x[n] for n in workload.input_names]
        else:
            xs, y = train_data()
        with deterministic(workload.seed):
            info = fit(m, xs, y, loss_fn, epochs=epochs, batch_size=batch_size, lr=lr,
                       seed=workload.seed, weight_decay=weight_decay)
        info["test_" + workload.task_metric] = round(evaluate(workload, m), 6)
        return info

    return cached_weights(workload, text, model, run)


def evaluate(workload: Any, model: nn.Module, split: str = "test", n: int | None = None,
             batch_size: int = 64) -> float:
    """The workload's task metric of `model` (torch, FP32) on a dataset split."""
    x, y = workload.dataset(split, n)
    outs = predict(model, [x[k] for k in workload.input_names], batch_size)
    return workload.metric(dict(zip(workload.output_names, outs)), y)


def cache_entries(workload: Any) -> list[tuple[Any, dict[str, Any]]]:
    """This workload's cached weights made with this torch: (path of the `.key.json`, its
    parsed content) for each, whatever the recipe; the weights are the `.pt` beside it."""
    want = json.dumps(workload.key(), sort_keys=True, default=list)
    found = []
    for kpath in cache_dir("weights", workload.name).glob("*.key.json"):
        try:
            d = json.loads(kpath.read_text())
            if (json.dumps(d["key"]["workload"], sort_keys=True, default=list) == want
                    and d["key"]["torch"] == torch.__version__.split("+")[0]):
                found.append((kpath, d))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def train_info(workload: Any) -> dict[str, Any] | None:
    """The info stored with this workload's cached trained weights (training time, test
    metric), or None when it has not been trained here yet."""
    found = []
    for kpath, d in cache_entries(workload):
        try:
            found.append((kpath.stat().st_mtime, {"recipe": d["key"]["recipe"], **d["info"]}))
        except (OSError, KeyError, TypeError):
            continue
    return max(found, key=lambda t: t[0])[1] if found else None


def fit(model: nn.Module, inputs: list[np.ndarray], target: np.ndarray,
        loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], *, epochs: int, batch_size: int,
        lr: float, seed: int, weight_decay: float = 1e-4,
        forward: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Adam + one-cycle learning rate, seeded shuffling; `loss_fn(model_output, target)`."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    yt = torch.from_numpy(np.ascontiguousarray(target))
    n = yt.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    run = forward or model
    model.train()
    last = float("nan")
    t0 = time.perf_counter()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            out = run(*[x[idx] for x in xs])
            loss = loss_fn(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        last = total / count
        print(f"  epoch {epoch + 1}/{epochs}: loss {last:.4f} ({time.perf_counter() - t0:.0f} s)",
              file=sys.stderr, flush=True)
    model.eval()
    return {"epochs": epochs, "final_train_loss": round(last, 6), "samples": int(n)}


@torch.no_grad()
def predict(model: nn.Module, inputs: list[np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """Eval-mode outputs as numpy (a list, one per model output)."""
    model.eval()
    outs: list[list[np.ndarray]] = []
    n = inputs[0].shape[0]
    for i in range(0, n, batch_size):
        o = model(*[torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])) for x in inputs])
        o = o if isinstance(o, tuple) else (o,)
        outs.append([t.numpy() for t in o])
    return [np.concatenate([b[k] for b in outs]) for k in range(len(outs[0]))]


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Set BatchNorm running statistics from data (cumulative average over `batches`), so a
    seeded-random network has realistic, well-scaled activations and folded BN constants."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for b in batches:
        model(b) if isinstance(b, torch.Tensor) else model(*b)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def seeded_calibrated(workload: Any, model: nn.Module, n: int = 16) -> nn.Module:
    """An untrained network with BatchNorm statistics from `n` of the workload's own inputs
    (without it, default BN statistics let activations of deep seeded nets vanish or blow
    up, and fidelity checks on them would be vacuous)."""
    x = workload.make_inputs(n, 10_000 + workload.seed)
    with torch.no_grad():
        calibrate_batchnorm(model, [tuple(torch.from_numpy(x[k]) for k in workload.input_names)])
    model.requires_grad_(False)
    return model.eval()
