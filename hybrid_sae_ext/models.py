"""Load TransformerLens models by name: the embedded default, a local folder, or the hub.

Why: SAE experiments need a real, trained model, and CI machines have no network. The embedded
default ``hybrid-sae-ext/tiny-lm`` ships with the package; any other name goes to
``HookedTransformer.from_pretrained`` unchanged, and when that cannot reach the hub the error says
so and names the offline alternatives. There is no silent fallback to another model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting, sae_lens_disk_loader
from sae_lens.constants import SAE_CFG_FILENAME as SAE_CONFIG_FILE
from sae_lens.constants import SAE_WEIGHTS_FILENAME as SAE_WEIGHTS_FILE
from sae_lens.registry import SAE_CLASS_REGISTRY
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hybrid_sae_ext.io import atomic_path, write_json_atomic

TINY_LM_NAME = "hybrid-sae-ext/tiny-lm"
EMBEDDED_DIR = Path(__file__).parent / "embedded" / "assets"
TINY_LM_DIR = EMBEDDED_DIR / "tiny-lm"
CORPUS_DIR = EMBEDDED_DIR / "corpus"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"
END_OF_TEXT = "<|endoftext|>"

ModelT = TypeVar("ModelT", bound=HookedTransformer)


MODEL_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
}  # fmt: skip


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (not embedded, not a local folder, hub unreachable)."""


def model_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A floating torch dtype from its name (``float32``, ``float16``, ``bfloat16``, ``float64``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not supported; allowed: {', '.join(MODEL_DTYPES)}")
    return MODEL_DTYPES[dtype]


def check_device(name: str, flag: str = "--device") -> torch.device:
    """A usable torch device, or a ValueError saying what is allowed here."""
    allowed = "allowed here: " + ", ".join(["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())])
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{flag}={name!r} is not a device; {allowed}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{flag}={name!r} is not available on this machine; {allowed}")
    if device.type not in {"cpu", "cuda"}:
        raise ValueError(f"{flag}={name!r}: only cpu and cuda devices are supported; {allowed}")
    return device


def read_json_file(path: Path, what: str) -> Any:
    """JSON from ``path``, or a ValueError naming the file and what it should be."""
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a valid JSON {what} ({err})") from err


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, or a ValueError naming the file (truncated, not safetensors)."""
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def load_model(
    name_or_path: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    model_class: type[ModelT] = HookedTransformer,  # type: ignore[assignment]
    **from_pretrained_kwargs: Any,
) -> ModelT:
    """Load ``TINY_LM_NAME``, a folder written by ``save_model_folder``, or a TransformerLens hub name.

    Pass ``model_class=HookedSAETransformer`` to splice SAEs into the loaded model.
    """
    dtype = model_dtype(dtype)
    folder = TINY_LM_DIR if name_or_path == TINY_LM_NAME else Path(name_or_path)
    if name_or_path == TINY_LM_NAME and not (folder / WEIGHTS_FILE).exists():
        raise ModelUnavailableError(
            f"the embedded default {TINY_LM_NAME!r} is not built at {folder}; "
            "build it with `python -m hybrid_sae_ext.embedded.build`"
        )
    if (folder / CONFIG_FILE).exists() and (folder / WEIGHTS_FILE).exists():
        return load_model_folder(folder, device=device, dtype=dtype, model_class=model_class)
    try:
        model = model_class.from_pretrained(name_or_path, device=str(device), dtype=dtype, **from_pretrained_kwargs)
    except (OSError, ConnectionError, ValueError) as err:  # hub unreachable, unknown name, missing cache
        raise ModelUnavailableError(
            f"could not load model {name_or_path!r} with HookedTransformer.from_pretrained ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Offline, use the embedded default "
            f"model_name={TINY_LM_NAME!r}, or a local folder written by "
            "hybrid_sae_ext.models.save_model_folder(model, path) on a machine with network "
            "(then pass that path as the model name), or set HF_HUB_OFFLINE=1 with the model in your HF cache."
        ) from err
    return model


# The HookedTransformerConfig fields a model folder may set: the model's shape and forward computation
# (plus its display name and BOS default). Nothing here names a file, a hub repo or code to run.
ARCHITECTURE_FIELDS = frozenset({
    "d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab", "d_vocab_out", "n_key_value_heads",
    "act_fn", "normalization_type", "positional_embedding_type", "attn_only", "gated_mlp", "uses_rms_norm", "eps",
    "layer_norm_folding", "final_rms", "post_embedding_ln", "use_normalization_before_and_after",
    "parallel_attn_mlp", "tie_word_embeddings", "num_experts", "experts_per_token", "norm_topk_prob",
    "attention_dir", "use_attn_scale", "attn_scale", "scale_attn_by_inverse_layer_idx", "use_qk_norm", "clip_qkv",
    "use_logn_attn", "train_seq_length", "use_local_attn", "window_size", "attn_types",
    "ungroup_grouped_query_attention", "attn_scores_soft_cap", "output_logits_soft_cap", "use_attention_sinks",
    "relative_attention_max_distance", "relative_attention_num_buckets",
    "rotary_dim", "rotary_base", "rotary_base_local", "rotary_scaling_factor", "rotary_adjacent_pairs",
    "use_dynamic_ntk_rope", "use_NTK_by_parts_rope", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
    "NTK_by_parts_factor", "NTK_original_ctx_len", "use_yarn_rope", "yarn_factor", "yarn_attention_factor",
    "yarn_beta_fast", "yarn_beta_slow", "yarn_original_max_position_embeddings", "yarn_truncate",
    "yarn_global_attn_only", "original_architecture",
    "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
    "default_prepend_bos", "model_name",
})  # fmt: skip
# Written by earlier versions of ``_config_to_json``: provenance and initialisation only (the weights are loaded
# over the init, tokenizer_prepends_bos is recomputed from the tokenizer). Dropped on load.
LEGACY_INERT_FIELDS = frozenset({
    "seed", "init_mode", "init_weights", "initializer_range", "n_params", "from_checkpoint", "checkpoint_index",
    "checkpoint_label_type", "checkpoint_value", "tokenizer_prepends_bos", "decoder_start_token_id",
})  # fmt: skip
# Also written by earlier versions; accepted only with these inert values. A tokenizer comes from the folder's
# own tokenizer/ subfolder, never from a name in its config, and remote code is never trusted.
LEGACY_FIXED_FIELDS: dict[str, Any] = {
    "tokenizer_name": None, "trust_remote_code": False, "load_in_4bit": False, "quantization_method": None,
}  # fmt: skip


def _config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The architecture fields of ``cfg`` (``ARCHITECTURE_FIELDS``); device and dtype are chosen at load time."""
    kept: dict[str, Any] = {}
    for field in dataclasses.fields(cfg):
        if field.name not in ARCHITECTURE_FIELDS:
            continue
        value = getattr(cfg, field.name)
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[field.name] = value
    return kept


def _config_from_json(entry: Any, config_file: Path, device: str) -> HookedTransformerConfig:
    """A HookedTransformerConfig from a folder's architecture fields only; any other key is a ValueError."""
    if not isinstance(entry, dict):
        raise ValueError(f"{config_file}: 'hooked_transformer_config' is not an object")
    def inert(key: str, value: Any) -> bool:
        return key in LEGACY_FIXED_FIELDS and value is LEGACY_FIXED_FIELDS[key]  # None / False exactly, not 0 or ""

    refused = sorted(
        key for key, value in entry.items()
        if key not in ARCHITECTURE_FIELDS and key not in LEGACY_INERT_FIELDS and not inert(key, value)
    )  # fmt: skip
    if refused:
        raise ValueError(
            f"{config_file}: hooked_transformer_config key(s) not allowed: {', '.join(refused)} (a model folder "
            "sets architecture fields only; its tokenizer comes from its tokenizer/ subfolder and remote code is "
            f"never trusted); allowed: {', '.join(sorted(ARCHITECTURE_FIELDS))}"
        )
    fields = {key: value for key, value in entry.items() if key in ARCHITECTURE_FIELDS}
    try:
        return HookedTransformerConfig(**fields, device=device, trust_remote_code=False, tokenizer_name=None)
    except (TypeError, ValueError, AssertionError) as err:
        problem = f"{type(err).__name__}: {err}".splitlines()[0]
        raise ValueError(f"{config_file}: hooked_transformer_config is not a valid model config ({problem})") from err


def _load_folder_tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``tokenizer_dir``, built-in classes only; a folder naming custom code is refused."""
    for name in ("tokenizer_config.json", "config.json"):
        file = tokenizer_dir / name
        config = read_json_file(file, "tokenizer config") if file.is_file() else {}
        if isinstance(config, dict) and "auto_map" in config:
            raise ValueError(f"{file}: 'auto_map' names custom tokenizer code, which is never run; not loaded")
    return AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)


def save_model_folder(model: HookedTransformer, folder: Path | str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (atomically) and the tokenizer folder."""
    folder = Path(folder)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
    write_json_atomic(folder / CONFIG_FILE, {"hooked_transformer_config": _config_to_json(model.cfg), **(extra or {})})
    return folder


def wrap_tokenizer(tokenizer: Tokenizer, folder: Path | str) -> PreTrainedTokenizerBase:
    """Save a ``tokenizers`` BPE as a transformers tokenizer folder and load it back from there.

    ``<|endoftext|>`` is BOS, EOS and padding, as in GPT-2. Loading from a folder matters:
    TransformerLens re-opens the tokenizer by its ``name_or_path`` to add BOS handling.
    """
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )
    wrapped.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_model_folder(
    folder: Path | str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    model_class: type[ModelT] = HookedTransformer,  # type: ignore[assignment]
) -> ModelT:
    """Rebuild a model saved by ``save_model_folder``; weights are read with safetensors only.

    The config may set architecture fields only (``ARCHITECTURE_FIELDS``): no tokenizer name, no
    ``trust_remote_code``. The tokenizer, if any, is the folder's ``tokenizer/`` subfolder, and one whose
    config has an ``auto_map`` (custom code) is refused.
    """
    folder = Path(folder)
    config = read_json_file(folder / CONFIG_FILE, "model config")
    if not isinstance(config, dict) or "hooked_transformer_config" not in config:
        raise ValueError(f"{folder / CONFIG_FILE} has no 'hooked_transformer_config' entry; not a saved model folder")
    cfg = _config_from_json(config["hooked_transformer_config"], folder / CONFIG_FILE, str(device))
    tokenizer_dir = folder / TOKENIZER_DIR
    tokenizer = _load_folder_tokenizer(tokenizer_dir) if tokenizer_dir.is_dir() else None
    model = model_class(cfg, tokenizer=tokenizer, default_padding_side="right")
    state = read_safetensors(folder / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [name for name in missing if not name.endswith(("IGNORE", "mask"))]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not fit its config: missing {missing}, unexpected {unexpected}")
    # print_details=False: TransformerLens would print 'Changing model dtype' / 'Moving model to device' lines
    return model.to(model_dtype(dtype), print_details=False).to(device, print_details=False).eval()


def load_pretrained_sae(release: str, sae_id: str, device: str = "cpu") -> SAE[Any]:
    """``SAE.from_pretrained(release, sae_id)`` from SAELens' registry, with a clear error offline."""
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except (OSError, ConnectionError) as err:  # hub unreachable or file not in the local cache
        raise ModelUnavailableError(
            f"could not download SAE {sae_id!r} of release {release!r} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Offline, load a local SAE folder with "
            "SAE.load_from_disk(path) (cfg.json + sae_weights.safetensors), or set HF_HUB_OFFLINE=1 with the "
            "release in your HF cache."
        ) from err


def load_sae_folder(path: Path | str, device: str = "cpu") -> SAE[Any]:
    """``SAE.load_from_disk`` with errors that name the file: a missing or broken ``cfg.json``, an
    architecture SAELens does not know, truncated weights, a tensor missing or of another shape than
    ``cfg.json`` implies, non-finite weights, a bad ``metadata.context_size``. Weights are read with
    safetensors only.
    """
    folder = Path(path)
    config_file, weights_file = folder / SAE_CONFIG_FILE, folder / SAE_WEIGHTS_FILE
    for file in (config_file, weights_file):
        if not file.is_file():
            raise ValueError(f"{file}: missing; an SAE folder holds {SAE_CONFIG_FILE} and {SAE_WEIGHTS_FILE}")
    config = read_json_file(config_file, "SAE config")
    architecture = config.get("architecture", "standard") if isinstance(config, dict) else None
    if architecture not in SAE_CLASS_REGISTRY:
        raise ValueError(
            f"{config_file}: architecture {architecture!r} is not a registered SAE architecture; "
            f"allowed: {', '.join(sorted(SAE_CLASS_REGISTRY))}"
        )
    try:
        sae = SAE.load_from_disk(str(folder), device=device, converter=_checked_disk_loader)
    except SafetensorError as err:
        raise ValueError(f"{weights_file}: not a readable safetensors file ({err})") from err
    except (TypeError, KeyError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise ValueError(f"{config_file}: does not describe a {architecture!r} SAE ({problem})") from err
    context_size = sae.cfg.metadata.context_size
    if context_size is not None and (not isinstance(context_size, int) or context_size < 2):
        raise ValueError(f"{config_file}: metadata.context_size is {context_size!r}; allowed: an integer >= 2 or null")
    return sae


def _checked_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens' disk loader, then ``check_sae_tensors`` (so ``load_state_dict`` never meets a mismatch)."""
    cfg_dict, state_dict = sae_lens_disk_loader(path, device, cfg_overrides=cfg_overrides)
    check_sae_tensors(Path(path), cfg_dict, state_dict)
    return cfg_dict, state_dict


def check_sae_tensors(folder: Path, cfg_dict: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> None:
    """Refuse, naming the file and tensor, weights that ``cfg.json`` does not describe or that are not finite.

    Why: ``load_state_dict`` reports a mismatch as a 30-line traceback, and NaN weights load silently and
    turn every metric, page and JSON file built from them into NaN.
    """
    weights_file, config_file = folder / SAE_WEIGHTS_FILE, folder / SAE_CONFIG_FILE
    cfg_dict = handle_config_defaulting(dict(cfg_dict))
    sae_cfg = SAE.get_sae_config_class_for_architecture(cfg_dict["architecture"]).from_dict(cfg_dict)
    sae_cfg.device = "meta"
    empty = SAE.get_sae_class_for_architecture(sae_cfg.architecture())(sae_cfg)
    found = dict(state_dict)
    empty.process_state_dict_for_loading(found)  # renames SAELens applies to older files (and what they imply)
    expected = {name: tuple(tensor.shape) for name, tensor in empty.state_dict().items()}
    described = f"{config_file} (architecture {sae_cfg.architecture()!r}, d_in={sae_cfg.d_in}, d_sae={sae_cfg.d_sae})"
    for name, shape in expected.items():
        if name not in found:
            raise ValueError(f"{weights_file}: tensor {name!r} is missing; {described} implies shape {shape}")
        if tuple(found[name].shape) != shape:
            raise ValueError(f"{weights_file}: tensor {name!r} has shape {tuple(found[name].shape)} but {described} "
                             f"implies {shape}")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f"{weights_file}: tensors {extra} are not part of {described}; allowed: {sorted(expected)}")
    for name, tensor in found.items():
        bad = int((~torch.isfinite(tensor)).sum()) if tensor.is_floating_point() else 0
        if bad:
            raise ValueError(f"{weights_file}: tensor {name!r} holds {bad} NaN/inf values; refusing to load an SAE "
                             "with non-finite weights")
