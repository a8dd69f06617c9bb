"""Training: TrRa, InRa's adapter training, distributed helpers and data preparation."""
