"""CacheActivationSource: exact-size batches, the same stream after a state round trip, foreign caches refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybrid_sae_ext.activations import CacheWriter, Manifest
from hybrid_sae_ext.training.cache_source import CacheActivationSource

HOOK = "blocks.1.hook_resid_pre"
D_IN = 6


def _cache(directory: Path, seed: int, shard_tokens: tuple[int, ...] = (50, 50, 50, 30)) -> Path:
    """A model-free cache of random rows in uneven shards (window and epoch edges fall mid-batch)."""
    manifest = Manifest(
        model_name="synthetic", hook_names=[HOOK], d_in={HOOK: D_IN}, dtype="float32",
        context_size=10, tokens_per_shard=max(shard_tokens), config={},
    )  # fmt: skip
    writer = CacheWriter.create_or_resume(directory, manifest)
    generator = torch.Generator().manual_seed(seed)
    for tokens in shard_tokens:
        writer.write_shard({HOOK: torch.randn(tokens, D_IN, generator=generator)})
    writer.finish()
    return directory


def _read(source: CacheActivationSource, batches: int, n: int = 64) -> list[torch.Tensor]:
    return [source.next_batch(n) for _ in range(batches)]


def test_batches_have_exactly_n_rows_and_cover_each_epoch(tmp_path: Path) -> None:
    with CacheActivationSource(_cache(tmp_path, seed=0), HOOK, seed=3, shuffle_shards=2) as source:
        batches = _read(source, 9, n=60)  # 540 rows: exactly 3 epochs of 180
        assert all(b.shape == (60, D_IN) and b.dtype == torch.float32 for b in batches)
        epochs = torch.cat(batches).split(180)
        for epoch in epochs[1:]:  # every epoch is a permutation of the same rows, in another order
            assert torch.equal(epoch.sort(0).values, epochs[0].sort(0).values)
            assert not torch.equal(epoch, epochs[0])


def test_state_round_trip_continues_the_same_stream(tmp_path: Path) -> None:
    cache = _cache(tmp_path, seed=0)
    with CacheActivationSource(cache, HOOK, seed=7) as uninterrupted:
        expected = _read(uninterrupted, 12)  # crosses several epochs
    with CacheActivationSource(cache, HOOK, seed=7) as first:
        _read(first, 5)
        state = json.loads(json.dumps(first.state_dict()))  # checkpoints hold it as JSON
    with CacheActivationSource(cache, HOOK, seed=123) as resumed:  # the stream's seed comes from the state
        resumed.load_state_dict(state)
        continued = _read(resumed, 7)
    for got, want in zip(continued, expected[5:], strict=True):
        assert torch.equal(got, want)


def test_a_different_batch_size_continues_row_exactly(tmp_path: Path) -> None:
    cache = _cache(tmp_path, seed=0)
    with CacheActivationSource(cache, HOOK) as source:
        rows = torch.cat(_read(source, 4, n=64))
    with CacheActivationSource(cache, HOOK) as source:
        mixed = torch.cat([source.next_batch(64), source.next_batch(100), source.next_batch(92)])
    assert torch.equal(mixed, rows)


def test_a_checkpoint_from_another_cache_is_refused(tmp_path: Path) -> None:
    with CacheActivationSource(_cache(tmp_path / "a", seed=0), HOOK) as source:
        source.next_batch(64)
        state = source.state_dict()
    refused = pytest.raises(ValueError, match=r"activation cache .*a \(shards sha256 .*holds different activations")
    with CacheActivationSource(_cache(tmp_path / "b", seed=1), HOOK) as other, refused:
        other.load_state_dict(state)


def test_hook_and_width_are_checked_against_the_manifest(tmp_path: Path) -> None:
    cache = _cache(tmp_path, seed=0)
    with pytest.raises(ValueError, match=r"no hook 'blocks.0.hook_resid_pre' in this cache"):
        CacheActivationSource(cache, "blocks.0.hook_resid_pre")
    with pytest.raises(ValueError, match=rf"hook '{HOOK}' has d_in {D_IN}, expected 128"):
        CacheActivationSource(cache, HOOK, d_in=128)
