"""The null backend hands back pre-made outputs: it measures the harness's own overhead."""

from __future__ import annotations

from chipbench.backends.base import Arrays, Compiled, CompileSpec, ModelSource, register


@register("null")
class NullBackend:
    description = "returns the reference outputs; measures harness overhead"
    precisions = ("fp32", "fp16", "bf16", "int8")
    devices = ("cpu",)

    def available(self) -> tuple[bool, str]:
        return True, ""

    def versions(self) -> dict[str, str]:
        return {}

    def compile(self, source: ModelSource, spec: CompileSpec) -> Compiled:
        canned = dict(spec.reference_outputs or {})

        def run(inputs: Arrays) -> Arrays:
            return canned

        return Compiled(run=run, compile_s=0.0, artifact_bytes=0, target="none", pipeline="none", canned=True)
