"""Data: the synthetic aging faces, dlib alignment, dataset readers, protocols, prepared format."""
