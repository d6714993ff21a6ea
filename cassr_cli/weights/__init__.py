"""Model weights: where they live, the manifest of what to download, downloads, verification, lookup.

Torch-free: loading the bytes into models happens in ``cassr_cli.engine``.
"""
