"""A slow/fast-thinking testbed that runs on a CPU: a verifiable arithmetic task, its tokenizer, and a recipe
that trains reference, aligned, TrRa and InRa models from scratch and evaluates them with the eval harness."""
