"""Offline calibration: smoothing (``mul_scale``) search under the exact target scheme, static int8
ranges, and an msModelSlim AscendV1 checkpoint with a calibration report (``docs/calibration.md``)."""
from .pipeline import CalibOptions, CalibrationInterrupted, calibrate, work_dir_for

__all__ = ["CalibOptions", "CalibrationInterrupted", "calibrate", "work_dir_for"]
