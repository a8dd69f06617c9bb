"""`flexrealign inra-train`: train only an InRa layer adapter on a frozen base model (paper §3.2).

  flexrealign inra-train --config configs/paper/inra_r1_1.5b_shortcot.yaml
  flexrealign inra-train --config cfg.yaml --method dpo --max_steps 100
  accelerate launch -m flexrealign.cli inra-train --config cfg.yaml      (several GPUs)
  accelerate launch --config_file configs/accelerate/ddp_cpu.yaml -m flexrealign.cli inra-train \
      --config cfg.yaml --use_cpu                                        (several CPU processes)

--method sft  : prompt/completion (or messages) data, TRL's SFTTrainer on the lam = 1 path
--method dpo  : prompt/chosen/rejected pairs, TRL's DPOTrainer; the reference is the lam = 0 path of the same
                model, so the base weights are held once
--method trra : the TrRa trainer with the adapter as the student

Writes the InRa checkpoint (L + n layers, loadable as the lam = 1 model by any HF loader) to --output_dir and
the adapter alone to <output_dir>/adapter.
"""

from __future__ import annotations

from accelerate import PartialState

from flexrealign.commands._args import fail, parse
from flexrealign.core.checkpoint import CheckpointError
from flexrealign.training.inra_train import InRaTrainConfig, train_inra


def run(argv: list[str]) -> int:
    (config,) = parse([InRaTrainConfig], argv, "inra-train", __doc__)
    missing = [name for name in ("base_model", "dataset", "output_dir") if not getattr(config, name)]
    if missing:
        return fail(f"set {', '.join(missing)} (in the --config YAML or as --{missing[0]} ...)")
    try:
        result = train_inra(config)
    except CheckpointError as e:
        return fail(str(e))
    if not PartialState().is_main_process:  # one summary line per run, not per process
        return 0
    loss = result.metrics.get("train_loss")
    print(
        f"trained the {config.adapter_type} adapter by {config.method}"
        + (f" (mean train loss {loss:.4f})" if loss is not None else "")
        + f"; InRa checkpoint in {config.output_dir}, adapter alone in {config.output_dir}/adapter"
    )
    return 0
