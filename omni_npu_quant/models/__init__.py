"""Built-in tiny seeded models (pure torch, no hub, no transformers) for the main job, tests,
calibration and parity."""
from .tiny import TinyDiT, TinyLlama, build_tiny, tiny_inputs

__all__ = ["TinyLlama", "TinyDiT", "build_tiny", "tiny_inputs"]
