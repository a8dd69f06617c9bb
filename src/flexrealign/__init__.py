"""flexrealign: change how strongly a language model is aligned, by a number lam, at training and inference time."""

__version__ = "0.1.0"
