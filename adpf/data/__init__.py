"""Data: the synthetic aging faces, dlib alignment, dataset readers, protocols, prepared format."""
from adpf.data.prepared import (Prepared, PreparedFaces, PreparedFormatError, default_dataset, load_prepared,
                                write_prepared, write_synthetic_prepared)
from adpf.data.synthetic import REGION_NAMES, SyntheticFaces, SyntheticFaceSpec, make_synthetic_faces, region_strength

__all__ = ["Prepared", "PreparedFaces", "PreparedFormatError", "default_dataset", "load_prepared",
           "write_prepared", "write_synthetic_prepared", "REGION_NAMES", "SyntheticFaces", "SyntheticFaceSpec",
           "make_synthetic_faces", "region_strength"]
