"""Reader: every token once per epoch, seeded determinism, exact resume, disjoint rank slices."""

import pytest
import torch

from hybrid_sae_ext.activations import ActivationReader, ReaderConfig, ReaderPosition, open_cache

HOOK = "blocks.0.hook_resid_post"
ALL_IDS = list(range(180))  # synthetic_cache: shards of 50, 50, 50, 30 rows, row i filled with i


def _ids(batches: list[torch.Tensor]) -> list[int]:
    rows = torch.cat(batches)
    assert rows.dtype == torch.float32 and (rows == rows[:, :1]).all()
    return [int(v) for v in rows[:, 0]]


def _read(cache, **overrides) -> tuple[list[torch.Tensor], ActivationReader]:
    reader = ActivationReader(cache, ReaderConfig(**{"hook_name": HOOK, "batch_size": 16, "shuffle_shards": 2, **overrides}))
    return list(reader), reader


def test_every_token_once_per_epoch_shuffled_and_seeded(synthetic_cache, tmp_path) -> None:
    cache = open_cache(synthetic_cache(tmp_path))
    batches, _ = _read(cache, seed=3, epochs=2)
    ids = _ids(batches)
    assert sorted(ids[:180]) == ALL_IDS and sorted(ids[180:]) == ALL_IDS
    assert ids[:180] != ALL_IDS and ids[:180] != ids[180:]  # shuffled, differently per epoch
    assert [len(b) for b in batches] == [16] * 22 + [8]
    assert _ids(_read(cache, seed=3, epochs=2)[0]) == ids
    assert _ids(_read(cache, seed=4, epochs=2)[0]) != ids


def test_unshuffled_reads_in_capture_order(synthetic_cache, tmp_path) -> None:
    batches, reader = _read(synthetic_cache(tmp_path), shuffle=False, drop_last=True)
    assert _ids(batches) == ALL_IDS[:176]
    assert reader.d_in == 3


@pytest.mark.parametrize("stop_after", [1, 6, 7, 12])
def test_resume_from_reported_position_continues_the_same_stream(synthetic_cache, tmp_path, stop_after) -> None:
    cache = open_cache(synthetic_cache(tmp_path))
    full = _ids(_read(cache, seed=1, epochs=2)[0])
    config = ReaderConfig(hook_name=HOOK, batch_size=16, shuffle_shards=2, seed=1, epochs=2)
    with ActivationReader(cache, config) as reader:
        head = [batch for _, batch in zip(range(stop_after), reader)]  # range first: no extra pull
        position = reader.position
    assert isinstance(position, ReaderPosition)
    tail = list(ActivationReader(cache, config, start=position))
    assert _ids(head) + _ids(tail) == full


def test_rank_slices_are_disjoint_and_cover_the_cache(synthetic_cache, tmp_path) -> None:
    cache = open_cache(synthetic_cache(tmp_path))
    per_rank = [_ids(_read(cache, rank=rank, world_size=2, seed=5)[0]) for rank in range(2)]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == ALL_IDS
    with pytest.raises(ValueError, match="cannot feed 5 ranks"):
        ActivationReader(cache, ReaderConfig(hook_name=HOOK, rank=0, world_size=5))


def test_producer_errors_reach_the_consumer(synthetic_cache, tmp_path) -> None:
    cache = open_cache(synthetic_cache(tmp_path))
    (cache.directory / "shard_00001.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="shard_00001.safetensors"):
        _read(cache, shuffle=False)
