"""An architecture-agnostic SAE trainer that resumes exactly after any crash.

Why not SAELens' ``SAETrainer``: it checkpoints with ``torch.save`` (unpickling on load), keeps no
RNG or data position, and has no gradient accumulation or non-finite checks. This trainer drives
the same SAELens interface (``training_forward_pass``, ``get_coefficients``) so every registered
architecture trains here, and takes an SAE's own sparse step where it has one (``SparseTrainingStep``).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput
from torch import Tensor

from hybrid_sae_ext.architectures.build import build_training_sae as build_architecture_sae
from hybrid_sae_ext.architectures.protocols import SparseTrainingStep
from hybrid_sae_ext.distributed.data_parallel import DataParallel
from hybrid_sae_ext.kernels.native import native_kernels
from hybrid_sae_ext.progress import progress_bar
from hybrid_sae_ext.training.checkpoint import (
    Checkpoint,
    CheckpointManager,
    check_state_matches,
    config_state,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
)
from hybrid_sae_ext.training.config import TrainConfig
from hybrid_sae_ext.training.data import ActivationSource
from hybrid_sae_ext.training.optimizer import all_finite, make_adam

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """The loss, gradients or weights became NaN/inf; the message names the step."""


@dataclass
class StepMetrics:
    step: int
    loss: float
    l0: float
    """Mean latents firing per token."""
    normalized_mse: float
    dead_fraction: float
    lr: float


@dataclass
class TrainResult:
    sae: TrainingSAE[Any]
    steps: int
    tokens: int
    seconds: float
    skipped_batches: int
    history: list[StepMetrics] = field(default_factory=list)


def build_training_sae(cfg: TrainConfig, d_in: int) -> TrainingSAE[Any]:
    """The registered training SAE for ``cfg.architecture``, seeded, with the fields ``cfg.sae_fields()`` sets."""
    return build_architecture_sae(cfg.architecture, d_in, cfg.d_sae, device=cfg.device, seed=cfg.seed,
                                  **cfg.sae_fields())


def _coefficient_value(coefficient: float | TrainCoefficientConfig, step: int) -> float:
    """A coefficient's value at ``step``: linear warm-up from 0 when the SAE asks for one."""
    if isinstance(coefficient, TrainCoefficientConfig):
        if coefficient.warm_up_steps > 0:
            return coefficient.value * min(1.0, step / coefficient.warm_up_steps)
        return coefficient.value
    return float(coefficient)


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{index}"] = state
    py_version, py_state, py_gauss = random.getstate()
    meta = {"python": [py_version, list(py_state), py_gauss], "numpy": [np_state[0], *map(_plain, np_state[2:])]}
    return tensors, meta


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[f"rng/cuda{i}"] for i in range(torch.cuda.device_count()) if f"rng/cuda{i}" in tensors]
    if cuda:
        torch.cuda.set_rng_state_all(cuda)
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))


class Trainer:
    """Trains one SAE from an ``ActivationSource``; ``resume()`` continues from the newest good checkpoint."""

    def __init__(
        self,
        cfg: TrainConfig,
        source: ActivationSource,
        sae: TrainingSAE[Any] | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.parallel = parallel or DataParallel.current()
        self.micro_batch = cfg.micro_batch_size(self.parallel.world_size)
        self.sae = sae if sae is not None else build_training_sae(cfg, source.d_in)
        if self.sae.cfg.d_in != source.d_in:
            raise ValueError(f"the SAE has d_in={self.sae.cfg.d_in} but the activations have d_in={source.d_in}")
        self.optimizer = make_adam(self.sae.parameters(), cfg.lr)
        self.coefficients = self.sae.get_coefficients()
        self.step = 0
        self.tokens_seen = 0
        self.skipped_batches = 0
        self.tokens_since_fired = torch.zeros(self.sae.cfg.d_sae, dtype=torch.long, device=self.sae.device)
        self.checkpoints = CheckpointManager(cfg.checkpoint_dir, cfg.keep_checkpoints) if cfg.checkpoint_dir else None
        self.last_checkpoint: str | None = None
        self.wandb_run_id: str | None = None

    # ----- one optimizer step -------------------------------------------------------------------
    def _micro_forward(self, x: Tensor, dead_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Loss, per-latent fired mask, summed L0 and the reconstruction for one micro-batch."""
        coefficients = {name: _coefficient_value(c, self.step) for name, c in self.coefficients.items()}
        if isinstance(self.sae, SparseTrainingStep):
            step = self.sae.sparse_training_step(x, dead_mask, coefficients)
            firing = step.codes.values != 0
            fired = torch.zeros_like(dead_mask).index_fill_(0, step.codes.indices[firing], True)
            return step.loss, fired, firing.sum(), step.sae_out
        out = self.sae.training_forward_pass(
            TrainStepInput(
                sae_in=x, coefficients=coefficients, dead_neuron_mask=dead_mask,
                n_training_steps=self.step, is_logging_step=False,
            )
        )
        firing = out.feature_acts != 0
        return out.loss, firing.any(0), firing.sum(), out.sae_out

    def train_step(self) -> StepMetrics | None:
        """One optimizer step over ``cfg.batch_size`` tokens; None when a non-finite batch was skipped."""
        self.sae.train()
        batch = self.parallel.local_slice(self.source.next_batch(self.cfg.batch_size)).to(self.sae.device)
        if bool(self.parallel.any_rank((~torch.isfinite(batch)).any().reshape(1))):
            return self._non_finite("NaN/inf in the input activations")
        dead_mask = self.tokens_since_fired >= self.cfg.dead_after_tokens
        fired = torch.zeros_like(dead_mask)
        loss_sum = batch.new_zeros(())
        l0_sum = batch.new_zeros(())
        error_sum = batch.new_zeros(())
        for micro in batch.split(self.micro_batch):
            loss, micro_fired, l0, sae_out = self._micro_forward(micro, dead_mask)
            (loss / self.cfg.grad_accum_steps).backward()
            with torch.no_grad():
                fired |= micro_fired
                loss_sum += loss.detach()
                l0_sum += l0
                error_sum += (sae_out.reshape(micro.shape) - micro).pow(2).sum()
        self.parallel.average_gradients(self.sae)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.cfg.clip_grad_norm or float("inf"))
        loss_mean = self.parallel.mean(loss_sum / self.cfg.grad_accum_steps)
        loss_value, grad_norm_value = torch.stack([loss_mean, grad_norm.to(loss_mean)]).tolist()  # one host sync
        if not (np.isfinite(loss_value) and np.isfinite(grad_norm_value)):
            return self._non_finite(f"loss={loss_value}, gradient norm={grad_norm_value}")
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.learning_rate(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(all_finite(self.sae.parameters())):
            raise NonFiniteError(
                f"weights became non-finite after the update at step {self.step}; "
                f"last good checkpoint: {self.last_checkpoint or 'none'}"
            )
        fired = self.parallel.any_rank(fired)
        self.tokens_since_fired += self.cfg.batch_size
        self.tokens_since_fired[fired] = 0
        self.step += 1
        self.tokens_seen += self.cfg.batch_size
        variance = (batch - batch.mean(0)).pow(2).sum()
        l0, normalized_mse, dead_fraction = torch.stack([  # one host sync
            self.parallel.mean(l0_sum / batch.shape[0]), self.parallel.mean(error_sum / variance),
            dead_mask.to(variance).mean(),
        ]).tolist()
        return StepMetrics(
            step=self.step,
            loss=loss_value,
            l0=l0,
            normalized_mse=normalized_mse,
            dead_fraction=dead_fraction,
            lr=self.cfg.learning_rate(self.step - 1),
        )

    def _non_finite(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        message = (
            f"non-finite training signal at step {self.step} ({what}); the weights were not updated; "
            f"last good checkpoint: {self.last_checkpoint or 'none'}"
        )
        if not self.cfg.skip_nonfinite_batches:
            raise NonFiniteError(message + "; pass skip_nonfinite_batches=True to skip such batches")
        logger.warning("%s; skipping the batch", message)
        self.skipped_batches += 1

    # ----- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Rank 0 writes; every rank waits so no rank runs ahead of a checkpoint."""
        if self.checkpoints is not None and self.parallel.is_main:
            optimizer_tensors, param_groups = optimizer_to_checkpoint(self.optimizer)
            rng_tensors, rng_meta = capture_rng()
            state = {
                "step": self.step, "tokens_seen": self.tokens_seen, "skipped_batches": self.skipped_batches,
                "param_groups": param_groups, "data": self.source.state_dict(), "rng": rng_meta,
                "wandb_run_id": self.wandb_run_id,
                "config": config_state(self.cfg),
            }
            tensors = {**optimizer_tensors, **rng_tensors, "tokens_since_fired": self.tokens_since_fired}
            path = self.checkpoints.save(Checkpoint(self.step, self.sae.state_dict(), tensors, state))
            self.last_checkpoint = str(path)
        self.parallel.barrier()

    def resume(self) -> bool:
        """Load the newest verified checkpoint (on any number of ranks); False when there is none."""
        if self.checkpoints is None:
            return False
        checkpoint = self.checkpoints.load_latest()
        if checkpoint is None:
            return False
        check_state_matches(checkpoint.sae_state, self.sae.state_dict(), checkpoint.path or "checkpoint")
        self.sae.load_state_dict({k: v.to(self.sae.device) for k, v in checkpoint.sae_state.items()})
        self.optimizer.load_state_dict(optimizer_from_checkpoint(checkpoint.tensors, checkpoint.state["param_groups"]))
        self.source.load_state_dict(checkpoint.state["data"])
        restore_rng(checkpoint.tensors, checkpoint.state["rng"])
        self.tokens_since_fired = checkpoint.tensors["tokens_since_fired"].to(self.sae.device)
        self.step = checkpoint.step
        self.tokens_seen = int(checkpoint.state["tokens_seen"])
        self.skipped_batches = int(checkpoint.state["skipped_batches"])
        self.wandb_run_id = checkpoint.state.get("wandb_run_id")
        self.last_checkpoint = str(checkpoint.path)
        return True

    # ----- the loop -----------------------------------------------------------------------------
    def train(self, stop_at_step: int | None = None) -> TrainResult:
        """Train to ``cfg.total_steps`` (or pause at ``stop_at_step``; the schedule stays the full run's)."""
        end = min(self.cfg.total_steps, stop_at_step or self.cfg.total_steps)
        run = self._start_wandb()
        history: list[StepMetrics] = []
        if isinstance(self.sae, SparseTrainingStep) and self.sae.W_enc.device.type == "cpu":
            native_kernels()  # a first-time C++ build (~40 s) happens here, before the clock starts
        start, start_tokens = time.perf_counter(), self.tokens_seen
        bar = progress_bar(total=self.cfg.total_steps, initial=self.step, desc=self.cfg.architecture,
                           enabled=self.cfg.progress_bar and self.parallel.is_main)
        while self.step < end:
            metrics = self.train_step()
            if metrics is None:
                continue
            history.append(metrics)
            bar.update(1)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.total_steps:
                tokens_per_s = (self.tokens_seen - start_tokens) / (time.perf_counter() - start)
                bar.set_postfix(tok_s=f"{tokens_per_s:,.0f}", loss=f"{metrics.loss:.4g}", l0=f"{metrics.l0:.1f}",
                                dead=f"{100 * metrics.dead_fraction:.1f}%", refresh=False)  # shown at the bar's own pace
                if run is not None:
                    run.log({**dataclasses.asdict(metrics), "tokens_per_s": tokens_per_s}, step=self.step)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()
        bar.close()
        if run is not None:
            run.finish()
        return TrainResult(self.sae, self.step, self.tokens_seen, time.perf_counter() - start,
                           self.skipped_batches, history)

    def _start_wandb(self) -> Any:
        if self.cfg.wandb_project is None or not self.parallel.is_main:
            return None
        import wandb

        run = wandb.init(project=self.cfg.wandb_project, id=self.wandb_run_id, resume="allow",
                         config=dataclasses.asdict(self.cfg))
        self.wandb_run_id = run.id
        return run
