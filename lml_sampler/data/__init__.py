"""Offline data helpers: the sklearn digits (digits.py) and random CT/MRI-like phantoms (phantoms.py)."""
