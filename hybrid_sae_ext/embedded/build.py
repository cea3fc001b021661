"""Build the embedded default: corpus -> byte-level BPE tokenizer -> a tiny GPT-2 trained on it.

Run ``python -m hybrid_sae_ext.embedded.build`` (about 10 minutes on 2 CPU cores). The outputs are
committed under ``hybrid_sae_ext/embedded/assets/`` so that tests and experiments never retrain it;
``metrics.json`` next to the weights records its validation loss against a unigram baseline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from simple_parsing import parse
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig

from hybrid_sae_ext.embedded.corpus import write_corpus
from hybrid_sae_ext.models import (
    CORPUS_DIR,
    END_OF_TEXT,
    TINY_LM_DIR,
    TOKENIZER_DIR,
    wrap_tokenizer,
    save_model_folder,
)
from hybrid_sae_ext.progress import progress_bar


@dataclass
class TinyLMConfig:
    """How the embedded default model is built."""

    vocab_size: int = 4096
    """BPE vocabulary size, including ``<|endoftext|>``."""
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    n_ctx: int = 128
    """Context length; training sequences are BOS + ``n_ctx - 1`` tokens of the concatenated corpus."""
    batch_size: int = 32
    steps: int = 3000
    lr: float = 3e-3
    warmup_steps: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    out_dir: Path = TINY_LM_DIR
    corpus_dir: Path = CORPUS_DIR


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE: every byte is representable, ``<|endoftext|>`` is special."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def token_sequences(texts: list[str], tokenizer: Tokenizer, n_ctx: int) -> torch.Tensor:
    """Concatenate documents separated by EOS and cut into BOS-prefixed rows of ``n_ctx`` tokens."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    stream: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        stream.extend(encoding.ids)
        stream.append(eot)
    body = n_ctx - 1
    rows = torch.tensor(stream[: len(stream) // body * body]).view(-1, body)
    return torch.cat([torch.full((rows.shape[0], 1), eot), rows], dim=1)


def unigram_loss(train: torch.Tensor, validation: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of add-one-smoothed train token frequencies on the validation targets."""
    counts = torch.bincount(train[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    log_probs = (counts / counts.sum()).log()
    return float(-log_probs[validation[:, 1:].reshape(-1)].mean())


@torch.no_grad()
def validation_loss(model: HookedTransformer, validation: torch.Tensor, batch_size: int = 64) -> float:
    losses = [model(batch, return_type="loss") * (batch.shape[0]) for batch in validation.split(batch_size)]
    return float(torch.stack(losses).sum() / validation.shape[0])


def build(cfg: TinyLMConfig) -> dict[str, float]:
    rows = write_corpus(cfg.corpus_dir)
    corpus = datasets.load_dataset(str(cfg.corpus_dir))
    train_texts, val_texts = corpus["train"]["text"], corpus["validation"]["text"]
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size)
    train, validation = (token_sequences(t, tokenizer, cfg.n_ctx) for t in (train_texts, val_texts))

    torch.manual_seed(cfg.seed)
    model_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_model // cfg.n_heads,
        d_mlp=4 * cfg.d_model, d_vocab=tokenizer.get_vocab_size(), n_ctx=cfg.n_ctx, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=True,
        model_name="tiny-lm", seed=cfg.seed,
    )
    model = HookedTransformer(model_cfg, tokenizer=wrap_tokenizer(tokenizer, cfg.out_dir / TOKENIZER_DIR))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / cfg.warmup_steps)
        * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps)),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    progress = progress_bar(range(cfg.steps), desc="tiny-lm")
    for step in progress:
        batch = train[torch.randint(0, train.shape[0], (cfg.batch_size,), generator=generator)]
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    metrics = {
        "validation_loss": validation_loss(model, validation),
        "unigram_validation_loss": unigram_loss(train, validation, tokenizer.get_vocab_size()),
        "uniform_loss": math.log(tokenizer.get_vocab_size()),
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.n_ctx,
        "corpus_train_tokens": int(train.numel()),
        "corpus_validation_tokens": int(validation.numel()),
        "corpus_documents": rows,
        "train_seconds": time.perf_counter() - start,
    }
    save_model_folder(model, cfg.out_dir, extra={"build_config": {k: v for k, v in vars(cfg).items() if not k.endswith("_dir")},
                                                 "metrics": metrics})
    return metrics


def main() -> None:
    metrics = build(parse(TinyLMConfig))
    for name, value in metrics.items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
