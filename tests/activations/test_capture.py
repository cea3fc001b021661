"""Capture: one pass for two layers equals separate passes; hooks, BOS and storage dtypes."""

import itertools
import os

import pytest
import torch
from sae_lens.training.activations_store import ActivationsStore

from hybrid_sae_ext.activations import (
    ActivationReader,
    ReaderConfig,
    capture_activations,
    load_text_dataset,
    open_cache,
    stop_layer,
    token_rows,
)
from hybrid_sae_ext.activations.saelens import export_saelens_dataset


def _cached(cache, hook: str) -> torch.Tensor:
    return torch.cat([cache.load_shard(i, hook) for i in range(cache.num_shards)])


def test_two_layers_in_one_pass_equal_two_separate_run_with_cache_calls(model, small_config, tmp_path) -> None:
    config = small_config(tmp_path)
    report = capture_activations(config, model)
    cache = open_cache(tmp_path, model_name=config.model_name)
    assert report.new_tokens == cache.manifest.total_tokens == 700
    assert [s.tokens for s in cache.manifest.shards] == [200, 200, 200, 100]

    mask = os.umask(0)
    os.umask(mask)  # shards and manifest get the usual permissions, so others can read a shared cache
    assert {p.stat().st_mode & 0o777 for p in tmp_path.glob("*.*")} == {0o666 & ~mask}

    rows = token_rows(load_text_dataset("embedded"), model.tokenizer, config.context_size)
    tokens = torch.stack(list(itertools.islice(rows, 700 // 32 + 1)))
    assert (tokens[:, 0] == model.tokenizer.bos_token_id).all()
    for hook in config.hook_names:
        expected = []
        for batch in tokens.split(config.batch_size):  # the capture's own batches: same bits
            _, separate = model.run_with_cache(batch, names_filter=hook)
            expected.append(separate[hook].reshape(-1, model.cfg.d_model))
        assert torch.equal(_cached(cache, hook), torch.cat(expected)[:700])


def test_skip_bos_activations_drops_position_zero(model, small_config, tmp_path) -> None:
    full = small_config(tmp_path / "full", total_tokens=320, hook_names=["blocks.0.hook_resid_post"])
    skip = small_config(tmp_path / "skip", total_tokens=310, hook_names=["blocks.0.hook_resid_post"], skip_bos_activations=True)
    capture_activations(full, model), capture_activations(skip, model)
    with_bos = _cached(open_cache(tmp_path / "full"), "blocks.0.hook_resid_post").reshape(10, 32, -1)
    without = _cached(open_cache(tmp_path / "skip"), "blocks.0.hook_resid_post").reshape(10, 31, -1)
    assert torch.equal(with_bos[:, 1:], without)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_storage_round_trip(model, small_config, tmp_path, dtype) -> None:
    hook = "blocks.1.hook_resid_post"
    capture_activations(small_config(tmp_path / "fp32", hook_names=[hook], total_tokens=256), model)
    capture_activations(small_config(tmp_path / dtype, hook_names=[hook], total_tokens=256, storage_dtype=dtype), model)
    reference = _cached(open_cache(tmp_path / "fp32"), hook)
    half = open_cache(tmp_path / dtype, d_in=model.cfg.d_model)
    assert half.manifest.dtype == {"fp16": "float16", "bf16": "bfloat16"}[dtype]
    stored = _cached(half, hook)
    assert torch.equal(stored, reference.to(stored.dtype))
    reader = ActivationReader(half, ReaderConfig(hook_name=hook, batch_size=256, shuffle=False))
    (batch,) = list(reader)
    assert batch.dtype == torch.float32 and torch.equal(batch, stored.float())


def test_unknown_hook_name_lists_close_valid_names(model, small_config, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_post"):
        capture_activations(small_config(tmp_path, hook_names=["blocks.1.hook_resid_pots"]), model)
    assert not (tmp_path / "manifest.json").exists()


def test_stop_layer_runs_only_the_needed_blocks() -> None:
    assert stop_layer(["blocks.0.hook_resid_post", "blocks.1.mlp.hook_post"]) == 2
    assert stop_layer(["hook_embed"]) == 0
    assert stop_layer(["blocks.0.hook_resid_pre", "ln_final.hook_normalized"]) is None


def test_saelens_export_matches_the_cache(model, small_config, tmp_path) -> None:
    hook = "blocks.0.hook_resid_post"
    config = small_config(tmp_path / "cache", hook_names=[hook], total_tokens=100, skip_bos_activations=True)
    capture_activations(config, model)
    dataset = export_saelens_dataset(tmp_path / "cache", tmp_path / "saelens", hook)
    assert dataset.features[hook].shape == (31, model.cfg.d_model) and len(dataset) == 3  # 100 // 31
    store = ActivationsStore(  # SAELens' own reader of CacheActivationsRunner output
        model, None, streaming=False, hook_name=hook, hook_head_index=None, context_size=31,
        d_in=model.cfg.d_model, n_batches_in_buffer=1, total_training_tokens=93, store_batch_size_prompts=3,
        train_batch_size_tokens=31, prepend_bos=True, normalize_activations="none", device=torch.device("cpu"),
        dtype="float32", cached_activations_path=str(tmp_path / "saelens"),
    )  # fmt: skip
    activations, _ = store.get_raw_llm_batch()
    assert torch.equal(activations, _cached(open_cache(tmp_path / "cache"), hook)[:93])


def test_local_text_file_running_out_before_total_tokens(model, small_config, tmp_path) -> None:
    text = tmp_path / "tiny.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.\n" * 20)
    config = small_config(tmp_path / "cache", dataset_path=str(text), total_tokens=10_000)
    with pytest.warns(UserWarning, match="dataset ran out after"):
        capture_activations(config, model)
    manifest = open_cache(tmp_path / "cache").manifest
    assert 0 < manifest.total_tokens < 10_000 and manifest.total_tokens % 32 == 0
