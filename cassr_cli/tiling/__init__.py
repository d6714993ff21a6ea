"""Tile plans (pure Python) and tile blending (torch): the heart of the memory-bounded engine."""
