"""What the live demo computes: per-token activations of a text, the latents a text uses, and steering.

Why separate from the HTTP layer: these are plain functions of a loaded SAE and model, so tests and
benchmarks call them directly, and the server only adds validation and JSON. Every input is bounded here
(text length, tokens, strength, new tokens), so no request can make the process run away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hybrid_sae_ext.dashboards.decode import span_token_texts, token_bytes
from hybrid_sae_ext.dashboards.source import SAESource, encode_firings, hook_activations

MAX_TEXT_CHARS = 2000
"""Longest text accepted (characters); its tokens must also fit the model's context."""
MAX_NEW_TOKENS = 64
MAX_ABS_STRENGTH = 1000.0
"""Largest |strength| for steering; beyond it the residual stream is noise, not a feature."""
STEER_MODES = ("add", "clamp")
GREEDY_BELOW_TEMPERATURE = 1e-4
"""Temperatures below this sample greedily: ``logits / temperature`` would overflow float32 near 1e-37, and
already at 1e-4 the sampled distribution is the argmax at float precision."""


class LiveModel:
    """A loaded SAE and model answering demo requests one at a time (the model is not thread-safe)."""

    def __init__(self, source: SAESource) -> None:
        self.source = source
        self.lock = threading.Lock()

    def tokenize(self, text: str) -> Tensor:
        """``[1, n]`` token ids (BOS first when the SAE was trained that way); a ValueError when too long."""
        if len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"text has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        if not text.strip():
            raise ValueError("text is empty")
        tokens = self.source.model.to_tokens(text, prepend_bos=self.source.prepend_bos, truncate=False)
        if tokens.shape[1] > self.source.model.cfg.n_ctx:
            raise ValueError(f"text is {tokens.shape[1]} tokens; the model's context is {self.source.model.cfg.n_ctx}")
        return tokens

    def check_latent(self, latent: int) -> None:
        if not 0 <= latent < self.source.d_sae:
            raise ValueError(f"unknown latent {latent}; this SAE has latents 0..{self.source.d_sae - 1}")

    def _codes(self, tokens: Tensor) -> tuple[list[int], Tensor, Tensor, Tensor]:
        """Text token ids (BOS dropped) and the firings of their positions."""
        with self.lock:
            firings, _ = encode_firings(self.source, hook_activations(self.source, tokens))
        first = int(self.source.prepend_bos)
        keep = firings.token >= first
        return tokens[0, first:].tolist(), firings.token[keep] - first, firings.latent[keep], firings.value[keep]

    def activations(self, text: str, top_k: int = 5, latent: int | None = None) -> dict[str, Any]:
        """Tokens of ``text`` (as the tokenizer decodes the span, with each token's raw bytes), the ``top_k``
        latents of each token, and (if asked) one latent's value per token."""
        if latent is not None:
            self.check_latent(latent)
        token_ids, token, ids, values = self._codes(self.tokenize(text))
        tokenizer = self.source.model.tokenizer
        strings = span_token_texts(tokenizer, token_ids)
        per_token: list[list[dict[str, Any]]] = [[] for _ in strings]
        order = torch.argsort(values, descending=True, stable=True)
        for t, i, v in zip(token[order].tolist(), ids[order].tolist(), values[order].tolist()):
            if len(per_token[t]) < top_k:
                per_token[t].append({"feature": i, "activation": round(v, 4)})
        out: dict[str, Any] = {"tokens": strings, "token_bytes": token_bytes(tokenizer, token_ids), "features": per_token}
        if latent is not None:
            chosen = torch.zeros(len(strings))
            chosen[token[ids == latent]] = values[ids == latent]
            out["feature"] = latent
            out["values"] = [round(float(v), 4) for v in chosen]
        return out

    def search(self, text: str, top: int = 10) -> list[dict[str, Any]]:
        """The latents ``text`` uses most: ranked by summed activation over its tokens."""
        _, _, ids, values = self._codes(self.tokenize(text))
        d_sae = self.source.d_sae
        total = torch.bincount(ids, weights=values.double(), minlength=d_sae)
        count = torch.bincount(ids, minlength=d_sae)
        peak = torch.zeros(d_sae).scatter_reduce_(0, ids, values, "amax")
        ranked = torch.argsort(total, descending=True, stable=True)[: min(top, int((count > 0).sum()))]
        return [{"feature": int(i), "total": round(float(total[i]), 4), "max": round(float(peak[i]), 4),
                 "tokens": int(count[i])} for i in ranked]

    def _steering_hook(self, latent: int, strength: float, mode: str) -> Callable[[Tensor, Any], Tensor]:
        direction = self.source.sae.W_dec[latent].detach()
        sae = self.source.sae

        def hook(acts: Tensor, hook: Any) -> Tensor:
            if mode == "add":
                return acts + strength * direction
            current = sae.encode(acts)[..., latent]  # clamp: set the latent's value to ``strength``
            return acts + (strength - current).unsqueeze(-1) * direction

        return hook

    def _generate(self, tokens: Tensor, max_new_tokens: int, seed: int, temperature: float,
                  hooks: list[tuple[str, Callable[..., Tensor]]]) -> str:
        generator = torch.Generator().manual_seed(seed)
        model = self.source.model
        prompt_length = tokens.shape[1]
        with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
            for _ in range(max_new_tokens):
                logits = model(tokens[:, -model.cfg.n_ctx :])[0, -1].float()
                if temperature < GREEDY_BELOW_TEMPERATURE:
                    next_token = logits.argmax().view(1, 1)
                else:
                    probs = torch.softmax(logits / temperature, -1)
                    next_token = torch.multinomial(probs, 1, generator=generator).view(1, 1)
                tokens = torch.cat([tokens, next_token], 1)
        return model.tokenizer.decode(tokens[0, prompt_length:])

    def steer(self, text: str, latent: int, strength: float, mode: str = "add", max_new_tokens: int = 20,
              seed: int = 0, temperature: float = 1.0) -> dict[str, Any]:
        """The default completion and the steered one, sampled with the same seed."""
        self.check_latent(latent)
        if mode not in STEER_MODES:
            raise ValueError(f"mode {mode!r} is not one of {STEER_MODES}")
        if not abs(strength) <= MAX_ABS_STRENGTH:
            raise ValueError(f"strength {strength} is outside [-{MAX_ABS_STRENGTH}, {MAX_ABS_STRENGTH}]")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens {max_new_tokens} is outside [1, {MAX_NEW_TOKENS}]")
        if not 0 <= temperature <= 10:
            raise ValueError(f"temperature {temperature} is outside [0, 10]")
        tokens = self.tokenize(text)
        with self.lock:
            default = self._generate(tokens, max_new_tokens, seed, temperature, [])
            hook = self._steering_hook(latent, strength, mode)
            steered = self._generate(tokens, max_new_tokens, seed, temperature, [(self.source.hook_name, hook)])
        return {"default": default, "steered": steered, "feature": latent, "strength": strength, "mode": mode,
                "seed": seed}
