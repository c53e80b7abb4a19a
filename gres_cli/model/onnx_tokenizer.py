"""The tokenizer of an ONNX model folder (gres_cli.model.onnx_spec), read with `tokenizers`
alone: no torch, no transformers. The export checks it against the model's own tokenizer; the
onnxruntime backend runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gres_cli.errors import ModelLoadError


class Tokenizer:
    """The export's tokenizer.json read with `tokenizers`: padded to T = max_tokens and
    truncated at T, as GRSer's TextEncoder.tokenize asks transformers to; with `pad=False`
    truncated at T only (CLIPSeg's backend tokenizes one expression, unpadded)."""

    def __init__(self, folder: Path, max_tokens: int, pad: bool = True) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{folder}: an ONNX model folder needs tokenizer.json")
        self.path = path
        self.tok = RustTokenizer.from_file(str(path))
        if not pad:
            self.tok.no_padding()
            self.tok.enable_truncation(max_length=max_tokens)
            return
        special = _json(folder / "tokenizer_config.json")
        pad = special.get("pad_token") or "[PAD]"
        pad = pad.get("content", "[PAD]") if isinstance(pad, dict) else pad
        pad_id = self.tok.token_to_id(pad)
        self.tok.enable_truncation(max_length=max_tokens)
        self.tok.enable_padding(length=max_tokens, pad_id=pad_id or 0, pad_token=pad)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int64 len(texts) x T."""
        enc = self.tok.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], np.int64)
        return ids, np.asarray([e.attention_mask for e in enc], np.int64)

    def count(self, text: str) -> int:
        """How many tokens `text` has untruncated (special tokens included)."""
        from tokenizers import Tokenizer as RustTokenizer

        whole = RustTokenizer.from_file(str(self.path))
        whole.no_truncation()
        whole.no_padding()
        return len(whole.encode(text).ids)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read ({e})") from None
