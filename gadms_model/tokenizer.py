"""CLIP BPE tokenizer with a [MASK] token, keeping CLIP's 49,408-entry vocabulary.

open_clip ships OpenAI's BPE merges. Like the reference code of the paper, the last BPE merge is dropped and its
id (49405) becomes `<|mask|>`, so the token embedding of a pretrained CLIP keeps its shape:
    0..49404  byte tokens and BPE merges (0 is also the padding id, as in CLIP)
    49405     <|mask|>
    49406     <|startoftext|> (SOT)
    49407     <|endoftext|>   (EOT, the highest id: CLIP's text feature is taken at argmax(ids))
Captions longer than the context are truncated with EOT forced into the last position.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from storage.compat import ensure_torchvision_ops

VOCAB_SIZE = 49408
MASK_TOKEN_ID = 49405
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
PAD_TOKEN_ID = 0
MASK_TOKEN = "<|mask|>"


class Tokenizer:
    """`tokenizer(["a man in a red coat"]) -> LongTensor[1, context_length]`."""

    vocab_size = VOCAB_SIZE
    mask_token_id = MASK_TOKEN_ID
    sot_token_id = SOT_TOKEN_ID
    eot_token_id = EOT_TOKEN_ID
    pad_token_id = PAD_TOKEN_ID

    def __init__(self, context_length: int = 77):
        ensure_torchvision_ops()
        from open_clip.tokenizer import SimpleTokenizer

        if context_length < 3:
            raise ValueError(f"context_length must be at least 3 (SOT, one word, EOT), got {context_length}")
        self.context_length = context_length
        bpe = SimpleTokenizer(context_length=context_length)
        # Drop the last merge (a fresh instance has encoded nothing with it yet): its id becomes <|mask|>.
        last_merge = max(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
        del bpe.bpe_ranks[last_merge]
        freed_id = bpe.encoder.pop("".join(last_merge))
        if (freed_id, bpe.sot_token_id, bpe.eot_token_id) != (MASK_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID):
            raise RuntimeError("open_clip's BPE vocabulary is not CLIP's 49,408-token layout")
        bpe.encoder[MASK_TOKEN] = MASK_TOKEN_ID
        bpe.decoder[MASK_TOKEN_ID] = MASK_TOKEN
        self._bpe = bpe

    def encode(self, text: str) -> list[int]:
        """BPE ids of one caption, without SOT/EOT."""
        return self._bpe.encode(text)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        result = torch.full((len(texts), self.context_length), PAD_TOKEN_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [SOT_TOKEN_ID, *self.encode(text)[: self.context_length - 2], EOT_TOKEN_ID]
            result[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return result

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of the tokens between SOT and EOT (padding and specials dropped, [MASK] shown as <|mask|>)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        pieces, run = [], []
        for token in ids:
            if token == EOT_TOKEN_ID:
                break
            if token == MASK_TOKEN_ID:
                pieces += [self._decode_run(run), MASK_TOKEN + " "]
                run = []
            elif token != SOT_TOKEN_ID:
                run.append(token)
        pieces.append(self._decode_run(run))
        return " ".join("".join(pieces).split())

    def _decode_run(self, ids: list[int]) -> str:
        text = "".join(self._bpe.decoder[token] for token in ids)
        raw = bytearray(self._bpe.byte_decoder[ch] for ch in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")
