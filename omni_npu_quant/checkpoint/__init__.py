"""msModelSlim checkpoints: reader, strict validation and the AscendV1 writer (docs/checkpoints.md)."""
from .reader import CheckpointError, LayerEntry, Problem, QuantizedCheckpoint, load_checkpoint, validate_checkpoint

__all__ = ["CheckpointError", "LayerEntry", "Problem", "QuantizedCheckpoint", "load_checkpoint", "validate_checkpoint",
           "write_ascendv1"]


def __getattr__(name):
    if name == "write_ascendv1":
        from .writer import write_ascendv1

        return write_ascendv1
    raise AttributeError(name)
