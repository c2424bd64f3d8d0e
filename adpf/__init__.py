"""adpf: Attention-based Dynamic Patch Fusion for face-based age estimation."""
from adpf.config import ADPFConfig, PRESETS, get_preset

__all__ = ["ADPFConfig", "PRESETS", "get_preset"]
__version__ = "0.1.0"
