"""The maths and the models: logit fusion, the fused model, InRa's layer adapter, DeRa, the family table, checkpoints."""
