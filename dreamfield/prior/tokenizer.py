"""A small CLIP-style byte-level BPE vocabulary built from a word list.

The embedded toy prior and the tiny test pipeline need a `transformers.CLIPTokenizer` whose vocabulary
knows a few dozen words. CLIP's tokenizer files are two: ``vocab.json`` (token -> id) and ``merges.txt``
(BPE merge rules in rank order). The format, as CLIP (Radford et al. 2021) and GPT-2 use it:

- text is lower-cased and split into words; each word is turned into bytes, and each byte into one
  printable unicode character (GPT-2's byte-to-unicode table, so no byte is whitespace or a control code);
- the last character of every word carries the end-of-word marker ``</w>``;
- merges join two adjacent symbols, lowest rank first; a word that merges down to one symbol is one token.

The vocabulary here holds every byte character, with and without ``</w>`` (so any text can be tokenized),
then one entry per merge result, then ``<|startoftext|>`` and ``<|endoftext|>`` last, as CLIP orders it.
The merges come from training BPE on the given words until each word is a single token.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map byte (0..255) -> one printable unicode character.

    Bytes that are already printable and not whitespace (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the remaining 68 bytes map, in increasing byte order, to code points 256, 257, ...
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _symbols(word: str, table: dict[int, str]) -> tuple[str, ...]:
    """A word as its starting BPE symbols: one character per UTF-8 byte, ``</w>`` on the last."""
    chars = [table[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + EOW
    return tuple(chars)


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Join every non-overlapping occurrence of ``pair`` in ``symbols``, left to right."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_bpe_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train byte-level BPE on ``words`` until each word is one token.

    Args:
        words: words (lower-cased here; whitespace inside a word is an error). Duplicates are ignored.
    Returns:
        ``(vocab, merges)``: vocab maps token -> id (512 byte tokens, one per merge, then BOS and EOS);
        merges lists the merge pairs in rank order. Deterministic: ties between equally frequent pairs
        are broken by the pair's text.
    """
    table = byte_to_unicode()
    unique = sorted({w.strip().lower() for w in words if w.strip()})
    for w in unique:
        if any(c.isspace() for c in w):
            raise ValueError(f"build_bpe_vocab: word {w!r} contains whitespace; pass single words")
    corpus = {w: _symbols(w, table) for w in unique}

    merges: list[tuple[str, str]] = []
    while True:
        counts: Counter[tuple[str, str]] = Counter()
        for syms in corpus.values():
            for pair in zip(syms[:-1], syms[1:]):
                counts[pair] += 1
        if not counts:
            break
        # Most frequent pair; ties broken by text so the result never depends on set ordering.
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        corpus = {w: _merge(syms, best) for w, syms in corpus.items()}

    vocab: dict[str, int] = {}
    for ch in table.values():
        vocab[ch] = len(vocab)
    for ch in table.values():
        vocab[ch + EOW] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return vocab, merges


def write_clip_tokenizer(folder: str | Path, words: Iterable[str], model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for `transformers.CLIPTokenizer`.

    Args:
        folder: created if missing (e.g. ``<pipeline>/tokenizer``).
        words: the words the tokenizer should know as single tokens (see :func:`build_bpe_vocab`).
        model_max_length: the padded prompt length (77 in Stable Diffusion); the text encoder's
            ``max_position_embeddings`` must be at least this.
    Returns:
        the folder. Load it with ``CLIPTokenizer.from_pretrained(folder)``; pad token is EOS, as in SD 1.x.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_bpe_vocab(words)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": int(model_max_length),
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder


def special_token_ids(vocab: dict[str, int]) -> tuple[int, int]:
    """``(bos_id, eos_id)`` of a vocabulary from :func:`build_bpe_vocab` (for the CLIP text config)."""
    return vocab[BOS], vocab[EOS]
