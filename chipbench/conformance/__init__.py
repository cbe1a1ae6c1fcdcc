"""The ONNX conformance scoreboard: every ONNX backend against ONNX's own operator tests.

`cases` writes ONNX's backend test cases (node and converted-model suites) into the cache once
per onnx version; `worker` runs cases on one backend in a long-lived process that `pool`
replaces after a crash or a hang; `compare` applies each case's own rtol/atol; `fault` finds the
node at fault; `document` and `scoreboard` store a run and summarise it for the report.
"""

# What became of one (case, backend), in the order the report lists them.
OUTCOMES = ("PASS", "WRONG", "UNSUPPORTED", "CRASHED", "TIMED OUT", "SKIPPED")
