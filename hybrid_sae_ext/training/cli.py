"""``hybrid-sae train``: capture (if needed), train from the cache, save for SAELens, evaluate.

Example (the embedded default model and corpus, offline)::

    hybrid-sae train --cache_dir runs/acts --out runs/hybrid --tokens 262144 \\
        --d_sae 2048 --k 16 --batch_tokens 4096 --total_steps 500 --checkpoint_dir runs/hybrid-ckpt

After a crash run the same command with ``--resume``: training continues from the newest good checkpoint on
the same data stream. Data-parallel: ``torchrun --nproc_per_node N -m hybrid_sae_ext train ...`` (rank 0
captures, saves and evaluates). The final SAE loads with ``sae_lens.SAE.load_from_disk(out)`` after
``import hybrid_sae_ext``; metrics go to ``out/eval.json``.

Why a library module: every step is importable and testable. The order is chosen so that every mistake we can
detect (bad config, unknown hook, a cache of another model or width, a checkpoint of another run) stops the run
with a one-line error *before* any capture or training time is spent. Under ``torchrun`` every rank validates
and reads the same global batches (the trainer slices them); only rank 0 captures, saves and evaluates.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import simple_parsing
import torch.distributed as dist
from sae_lens import SAE
from sae_lens.saes.sae import TrainingSAE
from safetensors import SafetensorError
from transformer_lens import HookedTransformer

from hybrid_sae_ext.activations import CaptureConfig, capture_activations, hook_widths, read_manifest
from hybrid_sae_ext.activations.cache import MANIFEST_FILE
from hybrid_sae_ext.activations.capture import validate_hook_names
from hybrid_sae_ext.cli_errors import cli_main, one_line, parse_config
from hybrid_sae_ext.distributed.data_parallel import DataParallel, init_from_environment
from hybrid_sae_ext.evals import SpliceEvalResult, evaluate_sae, load_eval_tokens
from hybrid_sae_ext.evals.cli import SPLICE_EVAL_FILE
from hybrid_sae_ext.folders import check_output_dir, check_path_text, folder_lock
from hybrid_sae_ext.io import fsync_dir, set_default_mode, write_json_atomic
from hybrid_sae_ext.measure import keep_freed_memory
from hybrid_sae_ext.models import SAE_CONFIG_FILE, SAE_WEIGHTS_FILE, TINY_LM_NAME, load_model, load_sae_folder
from hybrid_sae_ext.training.cache_source import CacheActivationSource
from hybrid_sae_ext.training.checkpoint import CheckpointManager, check_resume_config
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.trainer import Trainer

EVAL_FILE = "eval.json"
SAE_RUN_FILES = (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE, EVAL_FILE, SPLICE_EVAL_FILE)
"""What one run leaves in --out (``SPLICE_EVAL_FILE``: ``hybrid-sae evaluate``'s default output)."""
STAGING_PREFIX = ".sae-"


@dataclass
class TrainScriptConfig:
    """One training run from the command line: the trainer's config plus where the activations come from."""

    cache_dir: str
    """Activation cache folder; captured first (resumably) when missing or unfinished, else used as is."""
    out: str
    """Folder for the final SAE (SAELens ``save_inference_model``: cfg.json + sae_weights.safetensors) and eval.json."""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str = TINY_LM_NAME
    """Model name or folder for ``load_model`` (the embedded default works offline)."""
    hook_name: str = "blocks.1.hook_resid_pre"
    """Hook point whose activations the SAE reconstructs."""
    tokens: int = 1 << 20
    """Activation rows to capture (embedded corpus, train split) when the cache must be captured."""
    context_size: int = 128
    """Tokens per sequence when capturing, and for the evaluation rows."""
    skip_bos: bool = True
    """Capture without the BOS position (an outlier the evaluation excludes too)."""
    resume: bool = False
    """Continue from the newest good checkpoint in --checkpoint_dir (start fresh if there is none)."""
    eval_batches: int = 10
    """Batches of held-out validation rows to splice-evaluate after training (0: skip the evaluation)."""
    eval_batch_size: int = simple_parsing.field(default=8, alias="--eval_batch_sequences")
    """Sequences (rows of context_size tokens) per evaluation batch."""
    overwrite: bool = False
    """Replace an SAE already in --out (its cfg.json, weights and evaluation files are removed first)."""
    allow_config_change: bool = False
    """With --resume, continue even if k, lr, the architecture or another setting that changes the run differs
    from the checkpoint's (the changes are printed either way)."""

    def __post_init__(self) -> None:
        for name in ("tokens", "context_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.eval_batches < 0:
            raise ValueError(f"eval_batches must be >= 0, got eval_batches={self.eval_batches}")
        for flag in ("cache_dir", "out"):
            check_path_text(getattr(self, flag), f"--{flag}")
        if self.train.checkpoint_dir is not None:
            check_path_text(self.train.checkpoint_dir, "--checkpoint_dir")


@dataclass
class TrainScriptResult:
    """What one invocation did; throughput counts only this process's tokens, so it is right after a resume."""

    steps: int
    new_tokens: int
    seconds: float
    evaluation: SpliceEvalResult | None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def check_output_locations(cfg: TrainScriptConfig) -> None:
    """Before any work: every output folder is usable, they are distinct, and --out holds no SAE unless --overwrite."""
    folders = {"--cache_dir": cfg.cache_dir, "--out": cfg.out}
    if cfg.train.checkpoint_dir is not None:
        folders["--checkpoint_dir"] = str(cfg.train.checkpoint_dir)
    resolved: dict[Path, str] = {}
    for flag, folder in folders.items():
        if flag == "--cache_dir" and is_finished_cache(folder):  # only read: read-only storage is fine
            path = check_path_text(folder, flag).resolve()
        else:
            path = check_output_dir(folder, flag).resolve()
        if path in resolved:
            raise ValueError(f"{resolved[path]} and {flag} are the same folder {folder!r}; give each its own folder")
        resolved[path] = flag
    out = Path(cfg.out)
    existing = sorted(name for name in SAE_RUN_FILES if (out / name).exists())
    if existing and not cfg.overwrite and not interrupted_saves(out):
        raise ValueError(
            f"--out={cfg.out!r} already holds an SAE or its results ({', '.join(existing)}); "
            "pass --overwrite to replace them, or choose another folder"
        )


def is_finished_cache(folder: str) -> bool:
    """A complete activation cache is there: training only reads it (no lock, no write check)."""
    return (Path(folder) / MANIFEST_FILE).is_file() and read_manifest(folder).complete


def lock_output_folders(cfg: TrainScriptConfig, locks: contextlib.ExitStack) -> None:
    """Hold the checkpoint and output folders for this run; a second run writing either is refused.

    Once --out is held, what a killed final save left there is removed (see ``interrupted_saves``).
    """
    if cfg.train.checkpoint_dir is not None:
        locks.enter_context(folder_lock(cfg.train.checkpoint_dir, "checkpoint folder"))
    locks.enter_context(folder_lock(cfg.out, "SAE output folder"))
    out = Path(cfg.out)
    if stale := interrupted_saves(out):
        for name in SAE_RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for folder in stale:
            shutil.rmtree(folder)
        print(f"removed what an interrupted save left in {cfg.out} ({', '.join(f.name for f in stale)} and the "
              "SAE files beside it); the SAE is saved again at the end of this run")


def interrupted_saves(out: Path) -> list[Path]:
    """Staging folders of final saves that were killed: each save removes its own once its files are in place,
    so one left behind means the SAE files beside it are from an unfinished save, not an SAE."""
    return sorted(p for p in out.glob(f"{STAGING_PREFIX}*") if p.is_dir()) if out.is_dir() else []


def check_checkpoint_dir(cfg: TrainScriptConfig) -> None:
    """Refuse to start a fresh run over old checkpoints: pruning would delete the new ones first."""
    directory = cfg.train.checkpoint_dir
    if cfg.resume and directory is None:
        raise ValueError("--resume needs --checkpoint_dir (where the run's checkpoints are)")
    existing = CheckpointManager(directory).checkpoints() if directory is not None else []
    if existing and not cfg.resume:
        raise ValueError(
            f"checkpoint_dir={directory} already holds checkpoints (newest {existing[0].name}); "
            "pass --resume to continue that run, or choose an empty folder"
        )


def ensure_cache(cfg: TrainScriptConfig, model: HookedTransformer, show_progress: bool) -> None:
    """Capture ``cfg.cache_dir`` unless a finished cache is there (an unfinished one is resumed)."""
    if is_finished_cache(cfg.cache_dir):
        manifest = read_manifest(cfg.cache_dir)
        print(f"using the finished cache {cfg.cache_dir} ({manifest.total_tokens} tokens; --tokens is not used)")
        return
    capture = CaptureConfig(
        output_dir=cfg.cache_dir, model_name=cfg.model, hook_names=[cfg.hook_name], context_size=cfg.context_size,
        skip_bos_activations=cfg.skip_bos, total_tokens=cfg.tokens, device=cfg.train.device, progress=show_progress,
    )  # fmt: skip
    report = capture_activations(capture, model)
    print(f"captured {report.new_tokens} tokens into {cfg.cache_dir} ({report.tokens_per_second:,.0f} tokens/s)")


def prepare(
    cfg: TrainScriptConfig, parallel: DataParallel, locks: contextlib.ExitStack
) -> tuple[HookedTransformer, CacheActivationSource, Trainer]:
    """Validate everything, lock the output folders, capture if needed, build the trainer and resume it."""
    cfg.train.micro_batch_size(parallel.world_size)
    if parallel.is_main:
        check_output_locations(cfg)
        lock_output_folders(cfg, locks)
    check_checkpoint_dir(cfg)
    model = load_model(cfg.model, device=cfg.train.device)
    validate_hook_names(model, [cfg.hook_name])
    d_in = hook_widths(model, [cfg.hook_name])[cfg.hook_name]
    if parallel.is_main:
        ensure_cache(cfg, model, cfg.train.progress_bar)
    parallel.barrier()
    source = CacheActivationSource(cfg.cache_dir, cfg.hook_name, seed=cfg.train.seed, d_in=d_in, model_name=cfg.model)
    trainer = Trainer(cfg.train, source, parallel=parallel)
    if cfg.resume:
        check_resume(cfg)
        if trainer.resume():
            print(f"resumed from {trainer.last_checkpoint} (step {trainer.step})")
        else:
            print(f"no checkpoint in {cfg.train.checkpoint_dir}; starting from step 0")
    return model, source, trainer


def check_resume(cfg: TrainScriptConfig) -> None:
    """Refuse (or, with --allow_config_change, print) settings that differ from the checkpoint's."""
    assert cfg.train.checkpoint_dir is not None  # check_checkpoint_dir ran
    saved = CheckpointManager(cfg.train.checkpoint_dir).latest_state()
    if saved is None:
        return
    changes = check_resume_config(saved.get("config", {}), cfg.train, cfg.allow_config_change, cfg.train.checkpoint_dir)
    if changes:
        print(f"resuming with settings changed since the checkpoint: {'; '.join(changes)}")


def save_sae(sae: TrainingSAE[Any], cfg: TrainScriptConfig, context_size: int, checkpoint: str | None) -> SAE[Any]:
    """Write the inference SAE with the metadata SAELens tools read, and load it back as they would.

    Both files are written and fsynced in a hidden staging folder inside --out, then renamed into place with
    ``cfg.json`` last: every SAE loader starts from ``cfg.json``, so a reader finds the new SAE whole or no SAE,
    never a config beside other weights. A kill before the staging folder is removed leaves it behind, and the
    next run on --out (``--resume``) clears it (``interrupted_saves``). With --overwrite the previous SAE's files
    (its evaluations included) are removed first. If the files cannot be written (a full disk), the error names
    --out and where the trained weights are kept: ``checkpoint``, or else a folder in the system temp folder.
    """
    out = Path(cfg.out)
    metadata = sae.cfg.metadata
    metadata.model_name, metadata.hook_name = cfg.model, cfg.hook_name
    metadata.context_size, metadata.prepend_bos = context_size, True
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        sae.save_inference_model(str(staging))
        for file in staging.iterdir():
            set_default_mode(file)
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        for name in SAE_RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in (SAE_WEIGHTS_FILE, SAE_CONFIG_FILE):
            os.replace(staging / name, out / name)
        fsync_dir(out)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(f"could not save the SAE to --out={cfg.out!r} ({one_line(err)}); {keep_weights(sae, checkpoint)}") from err
    shutil.rmtree(staging, ignore_errors=True)
    return load_sae_folder(cfg.out, device=cfg.train.device)


def keep_weights(sae: TrainingSAE[Any], checkpoint: str | None) -> str:
    """Where the trained weights survive a failed final save, as a sentence for the error message."""
    if checkpoint is not None:
        return f"the trained weights are in checkpoint {checkpoint}; free space and rerun with --resume to save them"
    try:
        folder = Path(tempfile.mkdtemp(prefix="hybrid-sae-unsaved-"))
        sae.save_inference_model(str(folder))
    except (OSError, SafetensorError) as err:
        return f"the trained weights could not be kept anywhere ({one_line(err)}); use --checkpoint_dir next time"
    return f"the trained SAE was saved to {folder} instead; move it where you want it"


def evaluate(model: HookedTransformer, sae: SAE[Any], cfg: TrainScriptConfig, context_size: int) -> SpliceEvalResult:
    """Splice-evaluate on the embedded corpus' validation split: text the SAE was not trained on."""
    tokens = load_eval_tokens(
        model, split="validation", context_size=context_size, n_rows=cfg.eval_batches * cfg.eval_batch_size
    )
    return evaluate_sae(
        model, sae, tokens, cfg.hook_name, batch_size=cfg.eval_batch_size, progress=cfg.train.progress_bar
    )


def train_and_save(
    cfg: TrainScriptConfig,
    parallel: DataParallel,
    model: HookedTransformer,
    source: CacheActivationSource,
    trainer: Trainer,
) -> TrainScriptResult:
    """Train, then (rank 0) save the SAE to ``cfg.out`` and write ``eval.json`` there."""
    start_tokens = trainer.tokens_seen
    with source:
        result = trainer.train()
    summary = TrainScriptResult(result.steps, result.tokens - start_tokens, result.seconds, None)
    if parallel.is_main:
        context_size = source.cache.manifest.context_size
        sae = save_sae(trainer.sae, cfg, context_size, trainer.last_checkpoint)
        if cfg.eval_batches:
            summary.evaluation = evaluate(model, sae, cfg, context_size)
            training = {
                "steps": summary.steps,
                "tokens_this_run": summary.new_tokens,
                "seconds_this_run": summary.seconds,
                "tokens_per_second": summary.tokens_per_second,
            }
            write_json_atomic(Path(cfg.out) / EVAL_FILE, {
                "config": json.loads(json.dumps(asdict(cfg), default=str)),
                "training": training, **summary.evaluation.to_dict(),
            })  # fmt: skip
    parallel.barrier()
    return summary


@cli_main
def main(argv: list[str] | None = None) -> None:
    """Parse, validate, train, report; bad input exits with status 2 and a one-line message before any training."""
    cfg = parse_config(TrainScriptConfig, argv, description=__doc__)
    keep_freed_memory()  # no page faults on fresh temporaries each step (see hybrid_sae_ext.measure)
    parallel = init_from_environment()
    try:
        with contextlib.ExitStack() as locks:
            prepared = prepare(cfg, parallel, locks)
            run = train_and_save(cfg, parallel, *prepared)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if parallel.is_main:
        print(
            f"trained {run.steps} steps: {run.new_tokens} tokens in {run.seconds:.1f}s "
            f"({run.tokens_per_second:,.0f} tokens/s); saved the SAE to {cfg.out}"
        )
        if run.evaluation is not None:
            print(f"wrote {Path(cfg.out) / EVAL_FILE}")
            print(run.evaluation.headline())
