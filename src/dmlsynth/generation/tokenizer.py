"""A CLIP BPE tokenizer built from a small local vocabulary (no download).

The embedded generator (and the tests of the Stable Diffusion path) use the
same tokenizer class as Stable Diffusion, ``transformers.CLIPTokenizer``, made
from ``vocab.json`` + ``merges.txt`` written here: every character (alone and
word-final, ``</w>``), and for every caption word the left-to-right chain of
merges that builds it. Caption words become single tokens; any other word
still tokenizes, into known sub-word pieces.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Iterable

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation


def words_of(texts: Iterable[str]) -> list[str]:
    """The lower-case words of ``texts`` as CLIP's pre-tokenizer splits them (sorted, unique)."""
    found: set[str] = set()
    for text in texts:
        found.update(re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower()))
    return sorted(found)


def build_vocabulary(words: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """``(vocab, merges)`` of a BPE that turns each of ``words`` into one token."""
    tokens: list[str] = list(SPECIAL)
    tokens += list(ALPHABET) + [f"{c}</w>" for c in ALPHABET]
    merges: list[str] = []
    seen_tokens = set(tokens)
    seen_merges: set[str] = set()
    for word in sorted(set(words)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            current = current + piece
            if merge not in seen_merges:
                seen_merges.add(merge)
                merges.append(merge)
            if current not in seen_tokens:
                seen_tokens.add(current)
                tokens.append(current)
    return {token: i for i, token in enumerate(tokens)}, merges


def write_tokenizer_files(words: Iterable[str], folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocabulary(words)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_tokenizer(texts: Iterable[str], folder: str | Path, max_length: int):
    """A ``CLIPTokenizer`` whose vocabulary covers the words of ``texts``; files kept in ``folder``."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(words_of(texts), folder)
    # from_pretrained reads vocab.json + merges.txt the same way in transformers 4 and 5.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length, pad_token="<|endoftext|>")
