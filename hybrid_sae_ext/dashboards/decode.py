"""Token texts that add up to what the tokenizer decodes for the whole span, and each token's raw bytes.

Why: byte-level tokenizers split a multi-byte character (``é``, ``日``, ``😀``) over several tokens, and
decoding each token alone gives U+FFFD for every piece. Decoding the growing span instead and giving each
token the new text assigns the character to the token that completes it (the tokens before it show
nothing); the bytes each token holds are shown beside it (a tooltip), so nothing is hidden.
"""

from __future__ import annotations

import codecs
import functools
from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"


def span_token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One string per token; their concatenation is ``tokenizer.decode(ids)``."""
    texts: list[str] = []
    done = ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(list(ids[:end]))
        if text.endswith(REPLACEMENT) or not text.startswith(done):  # a character still incomplete
            texts.append("")
            continue
        texts.append(text[len(done):])
        done = text
    if texts:
        texts[-1] += tokenizer.decode(list(ids))[len(done):]  # a span that ends mid-character keeps its U+FFFD
    return texts


def texts_from_bytes(pieces: Sequence[bytes]) -> list[str]:
    """One string per token from each token's raw bytes, with the same rule as ``span_token_texts``: a
    character split over tokens goes to the token that completes it. Needs no tokenizer, so the static pages
    (which keep each token's bytes, ``vocab_bytes.json``) decode their example windows the same way."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(piece) for piece in pieces]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)  # a window that ends mid-character keeps its U+FFFD
    return texts


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's raw bytes as hex (``"c3 a9"``): byte-level pieces mapped back, else the token's UTF-8."""
    alphabet = _byte_of_char()
    out = []
    for piece, token_id in zip(tokenizer.convert_ids_to_tokens(list(ids)), ids):
        if piece in tokenizer.all_special_tokens or not all(char in alphabet for char in piece):
            raw = tokenizer.decode([token_id]).encode("utf-8")
        else:
            raw = bytes(alphabet[char] for char in piece)
        out.append(raw.hex(" "))
    return out
