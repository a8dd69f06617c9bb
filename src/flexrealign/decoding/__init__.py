"""Decoding: the dial, thinking state, sampling, the one decode step, generate() and effort calibration."""
