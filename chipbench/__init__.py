"""chipbench: industrial AI workloads through ONNX, TVM and vendor runtimes, measured alike."""

__version__ = "0.1.0"
