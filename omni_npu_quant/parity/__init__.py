"""Cross-device parity: the same inputs through every backend, layer by layer and end to end.

``build_source`` (model, inputs, quantized tensor sets) -> ``resolve_backends`` (which backends
exist here, and why not) -> ``run_parity`` (metrics, verdicts) -> ``write_report`` (JSON, Markdown,
PNG).  ``omni-npu-quant parity`` (``omni_npu_quant.cli.parity``) wires them together; the metric
definitions and thresholds are documented in docs/parity.md.
"""
from .backends import BackendStatus, parse_backend_list, resolve_backend, resolve_backends
from .metrics import compare, compare_bytes
from .report import write_report
from .runner import run_parity
from .source import ParitySource, build_source
from .thresholds import EXACTNESS, FLOAT_FLOORS, THRESHOLDS

__all__ = ["BackendStatus", "parse_backend_list", "resolve_backend", "resolve_backends", "compare", "compare_bytes",
           "write_report", "run_parity", "ParitySource", "build_source", "EXACTNESS", "FLOAT_FLOORS", "THRESHOLDS"]
