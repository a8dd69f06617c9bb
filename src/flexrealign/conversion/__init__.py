"""Loading and converting checkpoints: the one loader, GGUF and llama2.c conversion."""
