"""Diffusion math for text2sign (see diffusion/text2sign.py)."""
from diffusion.text2sign import Schedule, Text2SignDiffusion  # noqa: F401
