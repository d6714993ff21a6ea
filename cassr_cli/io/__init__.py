"""Inputs and outputs: source discovery, output naming, image decoding/encoding, atomic writes.

Torch-free: images are NumPy arrays here.
"""
