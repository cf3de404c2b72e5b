# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Tokenizer loading, preparation and a small BPE builder for tests and the demo model.

The released LLaVA-Med v1.5 folder ships a sentencepiece ``tokenizer.model`` with a ``LlamaTokenizer``
config; transformers 5 converts it to a fast (``tokenizers``) tokenizer, which needs ``sentencepiece`` and
``protobuf``. Folders with a ``tokenizer.json`` load directly. :func:`prepare_tokenizer` then makes sure
``<image>`` exists as a special token (id 32000 for the released 32000-token vocabulary) and that a pad
token exists: the unk token is reused when there is one (LLaVA's choice for Mistral; the vocabulary does
not grow), otherwise ``<pad>`` is added.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from monai_llava_med.errors import CheckpointError

from .templates import IMAGE_PLACEHOLDER

__all__ = [
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "load_tokenizer",
    "prepare_tokenizer",
    "build_bpe_tokenizer",
    "image_token_id_of",
]

logger = logging.getLogger(__name__)

IMAGE_TOKEN = IMAGE_PLACEHOLDER
PAD_TOKEN = "<pad>"

# text every chat template writes, so that a small BPE has merges for it
_TEMPLATE_TEXT = (
    "[INST] <image>\nWhat is shown? [/INST] Answer. </s>[INST] Q [/INST] USER: <image>\nQ ASSISTANT: A</s> "
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def image_token_id_of(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of ``<image>`` in a prepared tokenizer.

    Args:
        tokenizer: a tokenizer passed through :func:`prepare_tokenizer`.

    Raises:
        CheckpointError: ``<image>`` is not a token of this tokenizer.
    """
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or (tokenizer.unk_token_id is not None and tid == tokenizer.unk_token_id):
        raise CheckpointError("the tokenizer has no <image> token; pass it through prepare_tokenizer() first")
    return int(tid)


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    *,
    model_max_length: int | None = None,
    padding_side: str | None = None,
) -> PreTrainedTokenizerBase:
    """Add ``<image>`` (special) and a pad token when missing; idempotent.

    The pad token is the unk token when there is one; otherwise ``<pad>`` is added after ``<image>``, so its id
    lies beyond the language model's original vocabulary: the model's embeddings must be resized to cover it
    (:func:`~monai_llava_med.networks.assemble_from_parts` does so).

    Args:
        tokenizer: a Hugging Face tokenizer.
        model_max_length: context length to record on the tokenizer (unchanged when None).
        padding_side: "right" (training) or "left" (batched generation); unchanged when None.

    Returns:
        The same tokenizer object, modified in place.
    """
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        logger.info("added %s to the tokenizer as id %d", IMAGE_TOKEN, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
            logger.info("added %s to the tokenizer as id %d", PAD_TOKEN, tokenizer.pad_token_id)
    if model_max_length is not None:
        tokenizer.model_max_length = int(model_max_length)
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        tokenizer.padding_side = padding_side
    return tokenizer


def load_tokenizer(
    path_or_dir: str | os.PathLike,
    *,
    model_max_length: int | None = 2048,
    padding_side: str = "right",
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a model folder (or a ``tokenizer.json`` file) and prepare it.

    Nothing is downloaded: the folder must hold ``tokenizer.json`` or a sentencepiece ``tokenizer.model``
    (with its ``tokenizer_config.json``).

    Args:
        path_or_dir: a model folder, or the path of a ``tokenizer.json``.
        model_max_length: context length (LLaVA-Med: 2048); None keeps the saved value.
        padding_side: "right" for training, "left" for batched generation.

    Raises:
        CheckpointError: the path does not exist, holds no tokenizer files, or they cannot be parsed.
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise CheckpointError("no such tokenizer file or folder", path)
    try:
        if path.is_file():
            if path.suffix != ".json":
                raise CheckpointError("pass the model folder, or a tokenizer.json file", path)
            tok: PreTrainedTokenizerBase = PreTrainedTokenizerFast(tokenizer_file=str(path))
        else:
            if not any((path / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
                raise CheckpointError("the folder has neither tokenizer.json nor tokenizer.model", path)
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError) as e:
        raise CheckpointError(f"cannot load the tokenizer: {type(e).__name__}: {e}", path) from e
    return prepare_tokenizer(tok, model_max_length=model_max_length, padding_side=padding_side)


def build_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    *,
    min_frequency: int = 2,
    model_max_length: int = 2048,
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE with ``tokenizers`` and wrap it for transformers.

    Special tokens as in Llama/Mistral: ``<unk>`` = 0, ``<s>`` = 1 (BOS), ``</s>`` = 2 (EOS); ``<image>``
    is added after the trained vocabulary (id ``vocab_size`` when the vocabulary fills up) and the pad
    token is ``<unk>``. Byte-level pieces mean any text encodes without unknowns and decodes exactly.
    The chat-template keywords are added to the training text so they get merges. ``save_pretrained`` /
    :func:`load_tokenizer` round-trip it.

    Args:
        texts: training corpus.
        vocab_size: target vocabulary size (including the 256 byte symbols and 3 special tokens).
        min_frequency: minimum pair count for a merge.
        model_max_length: context length recorded on the tokenizer.
        padding_side: default padding side.
    """
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def corpus() -> Iterable[str]:
        for _ in range(max(2, min_frequency)):
            yield _TEMPLATE_TEXT
        yield from texts

    core.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )
    return prepare_tokenizer(tok)
