"""Model weights: the manifest, downloads, verification and lookup (torch-free; models load in engine)."""
