"""CLIP's text tokenizer: byte-level BPE over OpenAI's vocabulary
`bpe_simple_vocab_16e6.txt.gz` (49,152 merges' worth: 256 byte symbols, their
end-of-word forms, 48,894 merges, then <start_of_text> 49406 and <end_of_text>
49407).

    tok = CLIPTokenizer(find_bpe_vocab())          # or CLIPTokenizer("path/to/bpe_simple_vocab_16e6.txt.gz")
    ids = tok(["a smiling face", "a person with a beard"])   # (2, 77) int32

Text cleaning as open_clip's (and OpenAI's `simple_tokenizer.py`):
ftfy.fix_text (when ftfy is installed; without it mojibake is not repaired,
which changes ids only for broken text such as "cafÃ©"), HTML unescaped twice,
whitespace runs collapsed to one space (str.split's whitespace, as open_clip;
OpenAI's regex \\s+ differs only on the ASCII separators \\x1c-\\x1f),
stripped, lowercased. Words are split with CLIP's regex (needs the `regex`
package for \\p{L} / \\p{N}), each word's UTF-8 bytes mapped to printable
characters and merged by BPE rank.

Sequences longer than context_length are truncated keeping <end_of_text> as
the last token (open_clip's behaviour, and OpenAI's `tokenize(truncate=True)`;
OpenAI's default raises instead: pass truncate=False for that).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import os
from pathlib import Path

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT, EOT = "<start_of_text>", "<end_of_text>"
_PATTERN = (r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"""
            r"""|[^\s\p{L}\p{N}]+""")
_N_MERGES = 49152 - 256 - 2  # OpenAI reads merges[1 : 49152 - 256 - 2 + 1]


def find_bpe_vocab() -> Path:
    """The copy of bpe_simple_vocab_16e6.txt.gz inside an installed open_clip or
    OpenAI clip package (located with importlib, without importing the package,
    whose __init__ imports torch and torchvision). Never downloads. Raises
    FileNotFoundError (one line) when neither is installed."""
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / VOCAB_FILE
            if path.is_file():
                return path
    raise FileNotFoundError(f"CLIP tokenizer: no {VOCAB_FILE} found in an installed open_clip "
                            "or clip package; pass its path")


@functools.lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's (GPT-2's) reversible map of the 256 byte values to printable
    characters, so BPE never sees whitespace or control characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ImportError:
        return text  # documented above: only broken (mojibake) text tokenizes differently
    return ftfy.fix_text(text)


def clean_text(text: str) -> str:
    """OpenAI's basic_clean + whitespace_clean + lower()."""
    text = html.unescape(html.unescape(_fix_text(text))).strip()
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer.

    vocab_path: bpe_simple_vocab_16e6.txt.gz (see find_bpe_vocab).
    context_length: tokens per sequence (77 for every released CLIP).
    """

    def __init__(self, vocab_path: str | os.PathLike, context_length: int = 77):
        try:
            import regex
        except ImportError:
            raise ImportError("CLIP tokenizer needs the `regex` package (pip install regex) "
                              "for CLIP's \\p{L}/\\p{N} word pattern") from None
        path = Path(vocab_path)
        try:
            with gzip.open(path) as file:
                lines = file.read().decode("utf-8").split("\n")
        except FileNotFoundError:
            raise FileNotFoundError(f"CLIP tokenizer: no such file {path}") from None
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ValueError(f"CLIP tokenizer: {path} is not a gzipped BPE merge list "
                             f"({exc})") from None
        merges = [tuple(m.split()) for m in lines[1:_N_MERGES + 1]]
        if len(merges) != _N_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"CLIP tokenizer: {path} holds {len(merges)} merge lines, expected "
                             f"{_N_MERGES} pairs")
        byte_chars = list(bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.context_length = context_length
        self.pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    def _bpe(self, token: str) -> tuple[str, ...]:
        """The BPE symbols of one word (its last symbol marked with </w>)."""
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without <start_of_text>/<end_of_text>."""
        ids = []
        for token in self.pattern.findall(clean_text(text)):
            chars = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(chars))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids (special tokens kept as text, </w> as a space)."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | list[str], context_length: int | None = None,
                 truncate: bool = True) -> np.ndarray:
        """Token ids (N, context_length) int32 of N texts: <start_of_text>, the
        text's ids, <end_of_text>, zeros. Too long: truncated with <end_of_text>
        last (truncate=True) or ValueError naming the text (truncate=False, as
        OpenAI's default)."""
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), np.int32)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > n:
                if not truncate:
                    raise ValueError(f"CLIP tokenizer: text {text[:40]!r}... has {len(ids)} "
                                     f"tokens, more than the context length {n}")
                ids = ids[:n - 1] + [self.eot_id]
            out[row, :len(ids)] = ids
        return out
