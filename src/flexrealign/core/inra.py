"""InRaModel: a base decoder plus a layer adapter, decoded along two paths and fused at the logits (paper §3.2).

    aligned path:   embeddings -> adapter layers -> all L original layers -> norm -> lm_head
    reference path: embeddings ->                   all L original layers -> norm -> lm_head

Hidden states are never mixed (merging them breaks the model: it repeats "!!!!"); only logits are fused.
The original layers and the embeddings are shared by both paths and frozen; only the adapter trains.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel

from flexrealign.core.adapter import (
    AdapterConfig,
    adapter_model_config,
    base_model_config,
    check_supported,
    make_adapter_layers,
    merged_model_config,
)
from flexrealign.core.checkpoint import (
    CheckpointError,
    atomic_dir,
    load_state_dict,
    read_json,
    save_state_dict,
    wrap_load_errors,
    write_json,
)
from flexrealign.core.fused import BOTH, FusedCausalLM, PathCache
from flexrealign.core.fusion import ALIGNED, REF
from flexrealign.core.hf_compat import with_cache
from flexrealign.core.keywords import refuse_unknown_keywords

ADAPTER_CONFIG_NAME = "inra_config.json"
ADAPTER_WEIGHTS_PREFIX = "inra_adapter"


class InRaModel(FusedCausalLM):
    """A Hugging Face causal LM with an InRa layer adapter; `forward(..., lam=...)` fuses the two paths.

    The aligned path runs the adapter layers before the L original layers, the reference path skips them; the
    logits are fused as in the paper's Eq. 5, softmax(lam * h_aligned + (1 - lam) * h_ref). Build one with
    `from_base` (fresh adapter), `from_pretrained` (a saved checkpoint) or `from_adapter`.

    Args:
        base: the frozen base (reference) model, of a family in `flexrealign.core.families`.
        adapter: the adapter layers, run before layer 0 on the aligned path.
        adapter_config: how the adapter was built (`AdapterConfig`).

    Raises:
        ValueError: `base` is not a supported decoder family.

    Example:
        ```python
        model = InRaModel.from_pretrained("path/to/inra-checkpoint")
        tok = AutoTokenizer.from_pretrained("path/to/inra-checkpoint")
        batch = tok(["Hello", "Hi there"], return_tensors="pt", padding=True)  # input_ids (B, T)
        logits = model(batch.input_ids, batch.attention_mask, lam=[0.0, 1.5]).logits  # (B, T, V) fp32
        ```
    """

    probes_hidden = True  # `_path_logits` fills `hidden_out`: lam auto runs on InRa models
    source: str | None = None  # the folder it was loaded from (its calibration: `generate(lam="auto")`)

    def __init__(self, base: PreTrainedModel, adapter: nn.ModuleList, adapter_config: AdapterConfig) -> None:
        super().__init__()
        check_supported(base)
        self.base = base.requires_grad_(False)
        self.adapter = adapter.to(device=base.device, dtype=base.dtype).requires_grad_(True)
        self.adapter_config = adapter_config
        self.config = base.config
        self._adapter_hf_config = adapter_model_config(base.config, len(adapter))

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    @refuse_unknown_keywords
    def from_base(cls, model: PreTrainedModel, config: AdapterConfig | None = None) -> InRaModel:
        """Wrap `model` with fresh adapter layers copied from its bottom layer (identity at init by default).

        Args:
            model: the base (reference) causal LM; used in place and frozen, never copied.
            config: number of adapter layers and their init; default `AdapterConfig()` (1 layer, identity).

        Returns:
            An `InRaModel` whose only trainable parameters are the adapter's; at identity init every lam gives
            the base model's logits, (B, T, V).

        Raises:
            ValueError: `model` is not a supported decoder family.
            TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

        Example:
            ```python
            base = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
            model = InRaModel.from_base(base, AdapterConfig(num_layers=1, init="identity"))
            model.save_pretrained("out/inra")  # after training the adapter
            ```
        """
        config = config or AdapterConfig()
        return cls(model, make_adapter_layers(model, config), config)

    @classmethod
    @refuse_unknown_keywords
    def from_pretrained(
        cls, path: str | os.PathLike, trust_remote_code: bool = False, **hf_kwargs
    ) -> InRaModel:
        """Load an InRa checkpoint written by `save_pretrained` (a local folder or a Hub name).

        Args:
            path: the checkpoint: a standard HF model with L + n layers and an 'inra' config entry.
            trust_remote_code: passed to `AutoConfig`/`AutoModelForCausalLM.from_pretrained`.
            **hf_kwargs: more `from_pretrained` keywords (`dtype` defaults to "auto", `device_map`, ...).

        Returns:
            The `InRaModel`, its first n layers split off as the adapter (no weights copied).

        Raises:
            CheckpointError: (a ValueError) missing or corrupt config or weights.
            ValueError: the config has no valid 'inra' entry (not an InRa checkpoint).
            TypeError: a keyword it does not take (a typo is named with its close match), never dropped.

        Example:
            ```python
            model = InRaModel.from_pretrained("out/inra", dtype=torch.bfloat16)
            out = generate(model, tok, "What is 2 + 2?", lam=0.5, max_new_tokens=32)
            ```
        """
        merged_cfg = wrap_load_errors(
            f"the config of {path}",
            lambda: AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code),
        )
        base_model_config(merged_cfg)  # validates the 'inra' entry before loading any weight
        hf_kwargs.setdefault("dtype", "auto")
        merged = wrap_load_errors(
            f"the weights of {path}",
            lambda: AutoModelForCausalLM.from_pretrained(
                path,
                config=merged_cfg,
                use_safetensors=True,
                trust_remote_code=trust_remote_code,
                **hf_kwargs,
            ),
        )
        model = cls.from_merged(merged)
        model.source = str(path)
        return model

    @classmethod
    def from_merged(cls, merged: PreTrainedModel) -> InRaModel:
        """Split a loaded merged (lam = 1) model into base layers and adapter layers, without copying weights."""
        base_cfg, n = base_model_config(merged.config)
        meta = merged.config.inra
        layers = merged.model.layers
        adapter, body = nn.ModuleList(layers[:n]), nn.ModuleList(layers[n:])
        for i, layer in enumerate(body):
            layer.self_attn.layer_idx = i  # its slot in the KV cache
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = i
        merged.model.layers = body
        # Submodules hold a reference to the config object, so edit it in place rather than replace it.
        for key, value in base_cfg.to_dict().items():
            if key not in ("inra", "transformers_version"):
                setattr(merged.config, key, value)
        del merged.config.inra
        merged.config.name_or_path = meta.get("base_model", merged.config.name_or_path)
        return cls(merged, adapter, AdapterConfig(num_layers=n, init=meta.get("init", "identity")))

    @classmethod
    @refuse_unknown_keywords
    def from_adapter(
        cls, adapter_dir: str | os.PathLike, base: PreTrainedModel | str | None = None, **hf_kwargs
    ) -> InRaModel:
        """Load an adapter saved by `save_adapter` onto `base` (a model, a path/Hub name, or the recorded one)."""
        meta = read_json(Path(adapter_dir) / ADAPTER_CONFIG_NAME)
        if not isinstance(base, PreTrainedModel):
            name = base or meta.get("base_model")
            if not name:
                raise CheckpointError(f"{adapter_dir}: no base model recorded; pass base=...")
            hf_kwargs.setdefault("dtype", "auto")
            base = wrap_load_errors(
                f"base model {name}",
                lambda: AutoModelForCausalLM.from_pretrained(name, use_safetensors=True, **hf_kwargs),
            )
        model = cls.from_base(
            base, AdapterConfig(num_layers=meta["adapter_layers"], init=meta.get("init", "identity"))
        )
        model.load_adapter(adapter_dir)
        model.source = str(adapter_dir)
        return model

    # ---------------------------------------------------------------------------------------------- forward
    def new_cache(self, paths: Iterable[str]) -> PathCache:
        paths = tuple(paths)
        caches: dict[str, DynamicCache] = {}
        if ALIGNED in paths:
            caches["adapter"] = DynamicCache(config=self._adapter_hf_config)
        # Both paths cached: they share the original layers stacked on the batch axis (one pass of 2B rows),
        # which beat running them in turn (B rows twice) on the Qwen2.5-0.5B shape (2-core CPU, fp32, measured
        # with benchmarks/decode.py): 3.3 vs 2.6 tok/s at batch 1, 11.2 vs 7.3 at batch 8.
        if len(paths) == 2:
            caches[BOTH] = DynamicCache(config=self.config)
        else:
            caches.update({p: DynamicCache(config=self.config) for p in paths})
        return PathCache(paths, caches)

    def _path_logits(
        self, input_ids, attention_mask, position_ids, cache, paths, logits_to_keep, hidden_out=None
    ):
        emb = self.base.get_input_embeddings()(input_ids)  # (B, T, D)
        inputs = {}
        if ALIGNED in paths:
            inputs[ALIGNED] = self._run_adapter(emb, attention_mask, position_ids, cache)
        if REF in paths:
            inputs[REF] = emb
        if cache is not None and BOTH in cache.caches:
            hidden = self._run_body_stacked(inputs, attention_mask, position_ids, cache[BOTH])
        else:
            hidden = {
                p: self._run_body(x, attention_mask, position_ids, cache[p] if cache else None)
                for p, x in inputs.items()
            }
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        if hidden_out is not None:  # the final hidden states, for a probe (`FusedCausalLM.step_logits`)
            hidden_out.update({p: h[:, -1] for p, h in hidden.items()})  # path -> (B, D)
        return {p: self.base.lm_head(h[:, keep]) for p, h in hidden.items()}  # path -> (B, T', V)

    def _run_adapter(self, emb, attention_mask, position_ids, cache: PathCache | None) -> torch.Tensor:
        """The adapter layers, with their own mask and KV cache; computed once per token."""
        adapter_cache = cache["adapter"] if cache is not None else None
        out = self._adapter_runner()(
            inputs_embeds=emb,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=adapter_cache is not None,
            **with_cache(self.base.model, adapter_cache),
        )
        return out.last_hidden_state  # (B, T, D)

    def _adapter_runner(self) -> nn.Module:
        """The base decoder's own class, holding the adapter layers: its forward builds the masks and rotary
        tables the family's layers expect (sliding windows, per-layer-type rope), so nothing here is per family.

        It shares every module (the adapter layers, the base's rotary embedding) and ends in an identity where
        the base has its final norm. It is kept outside the module tree (no second name for the weights), and
        rebuilt whenever `self.adapter` is replaced.
        """
        runner = self.__dict__.get("_runner")
        if runner is None or runner.layers is not self.adapter:
            with torch.device("meta"):  # no memory for the layers and embedding the constructor makes
                runner = type(self.base.model)(self._adapter_hf_config)
            runner.layers, runner.rotary_emb = self.adapter, self.base.model.rotary_emb
            runner.norm, runner.embed_tokens = nn.Identity(), None
            left = [n for n, t in [*runner.named_parameters(), *runner.named_buffers()] if t.is_meta]
            if left:
                raise ValueError(
                    f"{type(self.base.model).__name__} holds more than InRa can share: {left[:5]}"
                )
            self.__dict__["_runner"] = runner
        runner.training = self.training  # its own flag only: its modules follow this model's train()/eval()
        return runner

    def _run_body(self, x, attention_mask, position_ids, cache: DynamicCache | None) -> torch.Tensor:
        """All L original layers and the final norm, through the base model's own forward."""
        out = self.base.model(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=cache is not None,
            **with_cache(self.base.model, cache),
        )
        return out.last_hidden_state  # (B, T, D)

    def _run_body_stacked(self, inputs, attention_mask, position_ids, cache: DynamicCache) -> dict:
        """Both paths in one pass of the original layers, stacked on the batch axis as [aligned; ref]."""
        x = torch.cat([inputs[ALIGNED], inputs[REF]])  # (2B, T, D)
        mask = torch.cat([attention_mask, attention_mask]) if attention_mask is not None else None
        pos = torch.cat([position_ids, position_ids]) if position_ids.shape[0] > 1 else position_ids
        h_aligned, h_ref = self._run_body(x, mask, pos, cache).chunk(2)  # (B, T, D) each
        return {ALIGNED: h_aligned, REF: h_ref}

    # ----------------------------------------------------------------------------------------------- saving
    def _state_parts(self, state_dict: dict[str, torch.Tensor] | None) -> tuple[dict, dict]:
        """(base state, adapter state): of this model's tensors, or split from `state_dict` ('base.*', 'adapter.*')."""
        if state_dict is None:
            return self.base.state_dict(), self.adapter.state_dict()
        base, adapter = (
            {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            for prefix in ("base.", "adapter.")
        )
        return base, adapter

    def merged_state_dict(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The state dict of the lam = 1 model: adapter layers first, then the original layers (no copies).

        `state_dict`: this model's full state dict to use instead of its own tensors (e.g. gathered from FSDP).
        """
        base, adapter = self._state_parts(state_dict)
        n = len(self.adapter)
        state = {}
        for key, value in base.items():
            if key.startswith("model.layers."):
                idx, rest = key[len("model.layers.") :].split(".", 1)
                key = f"model.layers.{int(idx) + n}.{rest}"
            state[key] = value
        for key, value in adapter.items():
            state[f"model.layers.{key}"] = value
        if getattr(self.config, "tie_word_embeddings", False):
            state.pop("lm_head.weight", None)  # tied to the embeddings; safetensors refuses shared storage
        return state

    def _meta(self) -> dict:
        return {"init": self.adapter_config.init, "base_model": str(self.config.name_or_path or "")}

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        tokenizer=None,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Write a standard HF checkpoint with L + n layers (the lam = 1 model) and the 'inra' config entry.

        Plain `AutoModelForCausalLM.from_pretrained` loads it as the fully aligned model; `InRaModel.from_pretrained`
        loads it as the two-path model. Written atomically: a crash leaves any previous folder intact.
        `state_dict` (this model's full state dict, e.g. gathered from FSDP shards) is written instead of the
        tensors held here.
        """
        cfg = merged_model_config(self.config, len(self.adapter), self._meta())
        cfg.architectures = cfg.architectures or [type(self.base).__name__]  # as HF's save_pretrained writes
        with atomic_dir(save_directory) as tmp:
            save_state_dict(self.merged_state_dict(state_dict), tmp)
            cfg.save_pretrained(tmp)
            if getattr(self.base, "generation_config", None) is not None:
                self.base.generation_config.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

    def save_adapter(
        self, save_directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write only the adapter (safetensors + `inra_config.json` recording the base model); `state_dict` as in
        `save_pretrained`."""
        meta = self._meta() | {
            "adapter_layers": len(self.adapter),
            "model_type": self.config.model_type,
            "hidden_size": self.config.hidden_size,
            "format": "flexrealign-inra-adapter/1",
        }
        with atomic_dir(save_directory) as tmp:
            save_state_dict(
                {f"layers.{k}": v for k, v in self._state_parts(state_dict)[1].items()},
                tmp,
                ADAPTER_WEIGHTS_PREFIX,
            )
            write_json(tmp / ADAPTER_CONFIG_NAME, meta)

    def load_adapter(self, adapter_dir: str | os.PathLike) -> None:
        """Replace this model's adapter weights with those saved in `adapter_dir` (shapes must match)."""
        meta = read_json(Path(adapter_dir) / ADAPTER_CONFIG_NAME)
        if (
            meta.get("model_type") != self.config.model_type
            or meta.get("hidden_size") != self.config.hidden_size
        ):
            raise CheckpointError(
                f"adapter in {adapter_dir} was made for model_type={meta.get('model_type')!r} "
                f"hidden_size={meta.get('hidden_size')}, not {self.config.model_type!r} {self.config.hidden_size}"
            )
        if meta.get("adapter_layers") != len(self.adapter):
            self.adapter = make_adapter_layers(self.base, AdapterConfig(num_layers=meta["adapter_layers"]))
            self.adapter.to(device=self.base.device, dtype=self.base.dtype)
            self._adapter_hf_config = adapter_model_config(self.config, len(self.adapter))
        state = load_state_dict(adapter_dir, ADAPTER_WEIGHTS_PREFIX)
        state = {k.removeprefix("layers."): v for k, v in state.items()}
        try:
            self.adapter.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"adapter weights in {adapter_dir} do not fit this model: {e}") from e

    def to_aligned_model(self) -> PreTrainedModel:
        """A new plain HF model with L + n layers: the lam = 1 model (copies the weights)."""
        cfg = merged_model_config(self.config, len(self.adapter), self._meta())
        model = AutoModelForCausalLM.from_config(cfg, dtype=self.dtype).to(self.device)
        missing, unexpected = model.load_state_dict(self.merged_state_dict(), strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:
            raise RuntimeError(f"merged state dict mismatch: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        return model.eval()

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters())
