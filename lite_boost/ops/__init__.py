"""Kernels and collectives that rewritten graphs call."""
