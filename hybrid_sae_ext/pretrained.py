"""Pretrained SAEs shipped in the package for the embedded model, loaded offline the SAELens way.

Why a converter and not a registry entry: SAELens reads its release list from its own packaged
``pretrained_saes.yaml`` (``get_pretrained_saes_directory``, cached on first use) and offers no way for a
plug-in to add a release. It does accept any ``converter`` for a release name of the form ``owner/name``, and
then runs its own path (config defaulting, architecture lookup, meta-device load, dtype and device). So::

    import hybrid_sae_ext
    from sae_lens import SAE
    from hybrid_sae_ext.pretrained import PRETRAINED_RELEASE, DEFAULT_SAE_ID, packaged_sae_loader

    sae = SAE.from_pretrained(PRETRAINED_RELEASE, DEFAULT_SAE_ID, converter=packaged_sae_loader)

is SAELens' own ``from_pretrained`` reading the package's files (no network), and ``load_pretrained()`` is a
shorthand for it. Each SAE folder holds ``cfg.json`` and ``sae_weights.safetensors`` (what ``save_inference_model``
writes), ``sparsity.safetensors`` (log10 firing frequency per latent, SAELens' convention) and
``pretrained.json``: the exact training command, its seed, and the held-out evaluation the tests check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
from safetensors import safe_open
from safetensors.torch import save_file

from hybrid_sae_ext.measure import device_name

PRETRAINED_DIR = Path(__file__).parent / "embedded" / "assets" / "saes"
PRETRAINED_RELEASE = "hybrid-sae-ext/tiny-lm-saes"
"""The release name for ``SAE.from_pretrained``; SAELens accepts an unlisted release only in ``owner/name`` form."""
DEFAULT_SAE_ID = "blocks.1.hook_resid_pre"
"""The shipped hybrid SAE (d_sae 1024, k 32) on the embedded model's layer-1 residual stream."""
DEFAULT_SAE_PATH = PRETRAINED_DIR / DEFAULT_SAE_ID
"""Its folder: the default ``--sae_path`` of the dashboards and the live demo."""
SPARSITY_FILE = "sparsity.safetensors"
RECORD_FILE = "pretrained.json"


def pretrained_ids() -> list[str]:
    """The SAE ids shipped in the package."""
    return sorted(path.name for path in PRETRAINED_DIR.iterdir() if (path / "cfg.json").is_file())


def pretrained_path(sae_id: str = DEFAULT_SAE_ID) -> Path:
    """The folder of a shipped SAE (readable by ``SAE.load_from_disk`` and every ``--sae_path`` option)."""
    path = PRETRAINED_DIR / sae_id
    if sae_id not in pretrained_ids():
        raise ValueError(f"sae_id={sae_id!r} is not a shipped pretrained SAE; shipped: {pretrained_ids()}")
    return path


def pretrained_record(sae_id: str = DEFAULT_SAE_ID) -> dict[str, Any]:
    """The shipped SAE's ``pretrained.json``: training command, seed, sparsity and held-out evaluation numbers."""
    return json.loads((pretrained_path(sae_id) / RECORD_FILE).read_text())


def packaged_sae_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """A SAELens ``PretrainedSaeHuggingfaceLoader`` that reads the package's folder instead of the hub.

    ``force_download`` is accepted for the protocol and has nothing to do: the files are local.
    """
    del force_download
    if repo_id != PRETRAINED_RELEASE:
        raise ValueError(f"release {repo_id!r} is not shipped with hybrid_sae_ext; use {PRETRAINED_RELEASE!r}")
    folder = pretrained_path(folder_name)
    cfg_dict, state_dict = sae_lens_disk_loader(folder, device, cfg_overrides)
    with safe_open(str(folder / SPARSITY_FILE), framework="pt", device=device) as handle:
        log_sparsity = handle.get_tensor("sparsity")
    return cfg_dict, state_dict, log_sparsity


def load_pretrained_with_sparsity(
    sae_id: str = DEFAULT_SAE_ID, device: str = "cpu", dtype: str = "float32"
) -> tuple[SAE[Any], dict[str, Any], torch.Tensor | None]:
    """``SAE.from_pretrained_with_cfg_and_sparsity`` on a shipped SAE: the SAE, its config dict, log10 sparsity."""
    pretrained_path(sae_id)  # a clear error for an unknown id before SAELens' own
    return SAE.from_pretrained_with_cfg_and_sparsity(
        PRETRAINED_RELEASE, sae_id, device=device, dtype=dtype, converter=packaged_sae_loader
    )


def load_pretrained(sae_id: str = DEFAULT_SAE_ID, device: str = "cpu", dtype: str = "float32") -> SAE[Any]:
    """``SAE.from_pretrained`` on a shipped SAE, offline: what SAELens returns for any pretrained release."""
    return load_pretrained_with_sparsity(sae_id, device, dtype)[0]


def package_run(run_folder: Path | str, command: str, seed: int, sae_id: str = DEFAULT_SAE_ID) -> Path:
    """Copy a training run's SAE into the package as ``sae_id``, with its sparsity and ``pretrained.json``.

    ``run_folder`` is a ``--out`` of ``scripts/train_hybrid_sae.py`` (cfg.json, sae_weights.safetensors, eval.json);
    ``command`` is the exact command that wrote it, kept in ``pretrained.json`` so anyone can retrain it.
    """
    run = Path(run_folder)
    evaluation = json.loads((run / "eval.json").read_text())
    folder = PRETRAINED_DIR / sae_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("cfg.json", "sae_weights.safetensors"):
        (folder / name).write_bytes((run / name).read_bytes())
    density = torch.tensor(evaluation["feature_density"], dtype=torch.float32)
    save_file({"sparsity": torch.log10(density + 1e-10)}, str(folder / SPARSITY_FILE))  # SAELens' convention
    scalars = {k: v for k, v in evaluation.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    record = {
        "release": PRETRAINED_RELEASE, "sae_id": sae_id, "command": command, "seed": seed,
        "training": evaluation["training"], "device": device_name("cpu"),
        "evaluation": {"split": "validation", "rows": evaluation["n_sequences"], **scalars},
    }
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=package_run.__doc__)
    parser.add_argument("--run", required=True, help="the training run's --out folder")
    parser.add_argument("--command", required=True, help="the exact training command")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--sae_id", default=DEFAULT_SAE_ID)
    arguments = parser.parse_args()
    print(package_run(arguments.run, arguments.command, arguments.seed, arguments.sae_id))
