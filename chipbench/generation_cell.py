"""Run one generation cell (`--scenario generation`): export both graphs, compile each with the
cell's spec, generate the FP32 reference, time the prompts, make the RunRecord.

A workload takes part when it offers the generation capability (`workload.generation()`,
see `chipbench.workloads.factory_llm.GenerationGraphs`); others are `unsupported`. Both
graphs are exported with their dynamic axes (prompt length for prefill, past length for
decode) and compiled through the ordinary `Backend.compile`. A backend whose compile of the
dynamic prefill fails gets one static prefill per prompt length instead (the record's
`generation.prefill_graphs` says which, with the reason); decode needs its dynamic past length
(its length grows by one each step), so a backend that cannot compile it is `unsupported`,
with the reason named.

Record: `latency` holds the TTFT statistics (ms), `throughput` the output tokens per second
(unit "tokens/s"), `generation` the rest (see `chipbench.generation.summarize`).
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from chipbench.accuracy import check, fidelity
from chipbench.backends.base import Compiled, CompileSpec, ModelSource, Unsupported
from chipbench.errors import one_line
from chipbench.generation import (GenerationSettings, Generated, Prompt, first_mismatch, generate, loop_issue,
                                  prompt_set, settings_dict, summarize)
from chipbench.measures import Accuracy, Throughput, finite
from chipbench.paths import atomic_write_bytes, sha256_file
from chipbench.prepare import EXPORTER, OPSET, PrepareError, _cached_dir, _store_key, export_key, export_onnx
from chipbench.stats import LatencyStats
from chipbench.validity import judged


def export_dynamic(workload) -> Path:
    """`workload`'s graph exported to ONNX with its `dynamic_axes()` (batch 1 example),
    opset OPSET, checked; cached by the exact key. PrepareError on failure."""
    import onnx
    import torch

    key = {**export_key(workload, 1), "dynamic_axes": workload.dynamic_axes()}
    folder, hit = _cached_dir("onnx", key)
    path = folder / "model.onnx"
    if hit and path.exists():
        return path
    example = workload.make_inputs(1, seed=workload.seed)
    args = tuple(torch.from_numpy(example[n]) for n in workload.input_names)
    buf = io.BytesIO()
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes turned into values
            torch.onnx.export(workload.build().eval(), args, buf, dynamo=False, opset_version=OPSET,
                              input_names=list(workload.input_names), output_names=list(workload.output_names),
                              dynamic_axes=workload.dynamic_axes())
        proto = onnx.load_from_string(buf.getvalue())
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise PrepareError(f"ONNX export of {workload.name} ({workload.graph}) failed: {one_line(exc, 300)}") from None
    atomic_write_bytes(path, proto.SerializeToString())
    _store_key(folder, key)
    return path


def source_of(workload, path: Path) -> ModelSource:
    return ModelSource(name=f"{workload.name}/{workload.graph}", onnx_path=path,
                       input_names=tuple(workload.input_names), output_names=tuple(workload.output_names),
                       build_torch=workload.build)


def torch_runs(graphs) -> tuple[Any, Any]:
    """The FP32 reference: the torch prefill and decode modules as `run` functions."""
    import torch

    from chipbench.backends.torch_backends import named_outputs

    def runner(workload):
        model = workload.build().eval()
        names, outs = workload.input_names, workload.output_names

        @torch.inference_mode()
        def run(inputs):
            return named_outputs(model(*(torch.from_numpy(inputs[n]) for n in names)), outs)

        return run

    return runner(graphs.prefill), runner(graphs.decode)


def decode_example(graphs, prefill_run, prompt: Prompt) -> dict[str, np.ndarray]:
    """Decode's inputs after `prompt`'s prefill (what the first decode step is fed)."""
    out = prefill_run({"input_ids": prompt.ids})
    feed = {"input_ids": np.array([[int(np.argmax(out["logits"][0]))]], np.int64),
            "position": np.array([prompt.length], np.int64)}
    return {**feed, **{name: out[src] for name, src in graphs.cache.items()}}


class Prefills:
    """A prefill `run` over one compiled graph (dynamic prompt length) or one per length."""

    def __init__(self, by_len: dict[int | None, Compiled], how: str) -> None:
        self.by_len, self.how = by_len, how

    def run(self, inputs):
        compiled = self.by_len.get(None) or self.by_len[int(inputs["input_ids"].shape[1])]
        return compiled.run(inputs)

    def close(self) -> None:
        for c in self.by_len.values():
            if c.close:
                c.close()


def compile_prefill(backend, graphs, path: Path, spec: CompileSpec, lens: tuple[int, ...], ref_prefill,
                    prompts: list[Prompt]) -> Prefills:
    """One dynamic prefill, or, when the backend cannot compile that, one static graph per
    prompt length (exported with `prompt_len` fixed, as chipbench's other cells are)."""
    first = prompts[0]
    try:
        compiled = backend.compile(source_of(graphs.prefill, path), replace(
            spec, example_inputs={"input_ids": first.ids}, reference_outputs=ref_prefill({"input_ids": first.ids})))
        compiled.run({"input_ids": prompts[min(1, len(prompts) - 1)].ids})  # another length: is it really dynamic?
        return Prefills({None: compiled}, "dynamic prompt length (one compiled graph)")
    except Exception as exc:  # noqa: BLE001 - the reason is recorded, then static graphs are tried
        why = one_line(exc, 200)
    by_len = {}
    for n in lens:
        w = replace(graphs.prefill, prompt_len=n)
        p = next(p for p in prompts if p.length == n)
        by_len[n] = backend.compile(source_of(w, export_onnx(w, 1)), replace(
            spec, example_inputs={"input_ids": p.ids}, reference_outputs=ref_prefill({"input_ids": p.ids})))
    return Prefills(by_len, f"static, one compiled graph per prompt length (dynamic failed: {why})")


def execute_generation(cell, backend, device, backend_info: dict, base_record) -> Any:
    """The RunRecord of a generation cell (`chipbench.cell.execute` hands over here once the
    backend is available and runs on the device). Every failure is a record with a reason."""
    from chipbench.workloads.base import get_workload

    settings = GenerationSettings.from_measure(cell.settings)
    try:
        workload = get_workload(cell.workload, **cell.workload_params)
    except Exception as exc:
        return base_record(cell, "failed", f"prepare: {one_line(exc)}", backend=backend_info)
    offer = getattr(workload, "generation", None)
    if not callable(offer):
        return base_record(cell, "unsupported", f"{cell.workload} does not generate text (no generation graphs)",
                           backend=backend_info)
    graphs = offer()
    longest = max(settings.prompt_lens) + settings.output_tokens
    if longest > graphs.max_positions:
        return base_record(cell, "failed", f"prompt_lens up to {max(settings.prompt_lens)} + output_tokens "
                           f"{settings.output_tokens} exceed the model's {graphs.max_positions} positions",
                           backend=backend_info)
    prompts = prompt_set(graphs.vocab, settings.prompt_lens, settings.prompts_per_len, cell.seed)
    try:
        prefill_path, decode_path = export_dynamic(graphs.prefill), export_dynamic(graphs.decode)
        ref_prefill, ref_decode = torch_runs(graphs)
        reference = [generate(ref_prefill, ref_decode, graphs.cache, p, settings.output_tokens) for p in prompts]
        margins = [token_margins(ref_prefill, ref_decode, graphs.cache, p, r.tokens) for p, r in zip(prompts, reference)]
    except Exception as exc:
        return base_record(cell, "failed", f"prepare: {one_line(exc)}", backend=backend_info)
    provenance = {"onnx_sha256": sha256_file(prefill_path), "exporter": EXPORTER, "opset": OPSET,
                  "generation_graphs": {"prefill": sha256_file(prefill_path), "decode": sha256_file(decode_path)}}
    ran = {"precision": cell.precision, "batch": 1, "backend": backend_info, "provenance": provenance}
    from chipbench.cell import describe_device

    spec = CompileSpec(precision=cell.precision, batch=1, threads=cell.threads, device=device, target=cell.target,
                       tuning_db=Path(cell.tuning_db) if cell.tuning_db else None,
                       options={"dynamic_shapes": True})
    example = decode_example(graphs, ref_prefill, prompts[0])
    try:
        decode = backend.compile(source_of(graphs.decode, decode_path), replace(
            spec, example_inputs=example, reference_outputs=ref_decode(example)))
    except Exception as exc:  # Unsupported or an error: either way it cannot run the decode graph
        return base_record(cell, "unsupported", f"decode graph (dynamic past length): {one_line(exc)}", **ran)
    try:
        prefill = compile_prefill(backend, graphs, prefill_path, spec, settings.prompt_lens, ref_prefill, prompts)
    except Exception as exc:
        if decode.close:
            decode.close()
        status = "unsupported" if isinstance(exc, Unsupported) else "failed"
        return base_record(cell, status, f"prefill graph: {one_line(exc)}", **ran)
    try:
        backend_info.update(target=decode.target, pipeline=decode.pipeline, tuning_db=decode.tuning_db,
                            details=decode.details)
        provenance["device"] = describe_device(device, decode)
        compile_info = {"seconds": decode.compile_s + sum(c.compile_s for c in prefill.by_len.values()),
                        "artifact_bytes": _bytes([decode, *prefill.by_len.values()])}
        return _measure(cell, settings, graphs, prefill, decode, prompts, reference, margins, ran, compile_info,
                        workload, base_record)
    except Exception as exc:
        return base_record(cell, "failed", f"run: {one_line(exc)}", **ran)
    finally:
        prefill.close()
        if decode.close:
            decode.close()


def _bytes(compiled: list[Compiled]) -> int | None:
    sizes = [c.artifact_bytes for c in compiled]
    return None if any(s is None for s in sizes) else int(sum(sizes))


def token_margins(prefill, decode, cache, prompt: Prompt, tokens: list[int]) -> list[float]:
    """Per output position, the reference's gap between its best and second-best logit (how
    near a tie greedy decoding was there), teacher-forced on the reference's own tokens."""
    out = prefill({"input_ids": prompt.ids})
    margins = []
    for j, token in enumerate(tokens):
        top2 = np.sort(out["logits"][0])[-2:]
        margins.append(float(top2[1] - top2[0]))
        if j + 1 < len(tokens):
            feed = {"input_ids": np.array([[token]], np.int64), "position": np.array([prompt.length + j], np.int64)}
            out = decode({**feed, **{name: out[src] for name, src in cache.items()}})
    return margins


def _measure(cell, settings: GenerationSettings, graphs, prefill: Prefills, decode: Compiled, prompts, reference,
             margins, ran, compile_info, workload, base_record):
    from chipbench.generation_loadgen import loadgen_issue

    def one(i: int, on_first=None) -> Generated:
        return generate(prefill.run, decode.run, graphs.cache, prompts[i], settings.output_tokens,
                        on_first_token=on_first)

    # untimed warm-up: every prompt once (every prompt length, compiled or not, is seen before timing)
    for i in range(len(prompts)):
        one(i)
    for _ in range(max(settings.measure.warmup_count - 1, 0)):
        one(0)
    timed = loadgen_issue(one, prompts, settings.measure)
    if timed is None:
        timed = loop_issue(one, prompts, settings.measure)
    failures = []
    gate = workload.tolerance(cell.precision)
    # logits of the first step: the backend's on the first prompt, against the FP32 reference's
    first = next(g for i, g in timed.queries if i == 0) if any(i == 0 for i, _ in timed.queries) else one(0)
    fid = fidelity({"logits": first.first_logits}, {"logits": reference[0].first_logits})
    failures += [f"first-step logits: {f}" for f in check(fid, gate)]
    mismatches = []
    for i, g in timed.queries:
        pos = first_mismatch(g.tokens, reference[i].tokens)
        if pos is not None:
            mismatches.append((i, pos))
    if mismatches:
        i, pos = min(mismatches, key=lambda m: (m[1], m[0]))
        got = next(g for j, g in timed.queries if j == i).tokens
        margin = margins[i][pos] if pos < len(margins[i]) else float("nan")
        failures.append(f"generated tokens differ from the FP32 reference in {len(mismatches)} of "
                        f"{len(timed.queries)} queries; first at output token {pos} of prompt {i} "
                        f"({prompts[i].length} tokens): {got[pos] if pos < len(got) else 'none'} != "
                        f"{reference[i].tokens[pos]} (reference top-2 logit gap there {margin:.3g})")
    summary = summarize(timed.queries, prompts, seed=cell.seed)
    generation = {
        **settings_dict(settings),
        "prompts": {"count": len(prompts), "lengths": [p.length for p in prompts],
                    "token_ids": "uniform in [0, vocab), numpy PCG64 seeded with (seed, length, k)"},
        "timing": "host clock; TTFT = prefill + argmax of the first token; TPOT = (latency - TTFT) / "
                  "(output_tokens - 1); KV cache passed as host arrays between steps",
        "prefill_graphs": prefill.how,
        "decode_graph": "dynamic past length (one compiled graph)",
        "issuer": timed.issuer,
        "loadgen": timed.loadgen,
        "ttft": summary["ttft"], "tpot": summary["tpot"], "tokens_per_s": summary["tokens_per_s"],
        "per_prompt_len": summary["per_prompt_len"],
        "tokens_checked": {"queries": len(timed.queries), "mismatched_queries": len(mismatches)},
    }
    accuracy = Accuracy(fid, dict(vars(gate)), tuple(failures))
    notes = ["latency is time to first token (TTFT); throughput is output tokens per second",
             *([timed.note] if timed.note else [])]
    # the accuracy rules decide; LoadGen's token-latency verdict is kept in `generation.loadgen`
    ttft = LatencyStats.from_dict(summary["ttft"])
    judgement = judged(accuracy, ttft, None)
    return base_record(cell, "ok", judgement.pop("reason"), **ran, compile=compile_info, latency=ttft,
                       throughput=Throughput(summary["tokens_per_s"]["value"], "tokens/s"),
                       accuracy=accuracy, notes=notes, generation=finite(generation), **judgement)
