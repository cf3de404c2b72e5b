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

For serving, :func:`serving_tokenizer_files` writes a tokenizer folder that transformers 4.4x and 5.x (and
vLLM / SGLang) load and prompt exactly as we do: a portable ``PreTrainedTokenizerFast`` config without
loader-only keys, a ``tokenizer.json`` whose post-processor adds BOS once (when the template wants it), and a
Jinja chat template generated from our :class:`~monai_llava_med.conversation.ConversationTemplate`
(:func:`chat_template_jinja`), which renders the same string as ``render_conversation``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from monai_llava_med.errors import CheckpointError, TemplateError

from .templates import IMAGE_PLACEHOLDER, ConversationTemplate, get_template

__all__ = [
    "IMAGE_TOKEN",
    "PAD_TOKEN",
    "load_tokenizer",
    "prepare_tokenizer",
    "build_bpe_tokenizer",
    "image_token_id_of",
    "chat_template_jinja",
    "serving_tokenizer_files",
    "save_tokenizer",
    "LOADER_ONLY_KEYS",
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


# --------------------------------------------------------------------------------------- serving export
#: Keys ``from_pretrained`` records in ``init_kwargs`` that describe how a folder was loaded, not the tokenizer.
LOADER_ONLY_KEYS = frozenset(
    {"local_files_only", "is_local", "name_or_path", "_commit_hash", "cache_dir", "revision", "token",
     "force_download", "subfolder", "trust_remote_code", "use_auth_token", "proxies"}
)
# the ConversationTemplate fields the Jinja generator knows how to express
_JINJA_FIELDS = {
    "name", "system", "system_format", "system_in_first_user", "user_format", "assistant_prefix",
    "answer_format", "stop_str", "add_bos", "drop_user_text", "round_separator", "strip_messages",
}


def _jinja_concat(fmt: str, fields: dict[str, str], where: str) -> str:
    """A Python format string (``"[INST] {content} [/INST]"``) as a Jinja concatenation expression."""
    parts: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(fmt):
        if literal:
            parts.append(json.dumps(literal))  # a JSON string is a valid Jinja string literal
        if field is not None:
            if field not in fields or spec or conversion:
                raise TemplateError(f"{where}: placeholder {{{field}}} cannot be written as a chat template")
            parts.append(fields[field])
    return "(" + (" ~ ".join(parts) or '""') + ")"


def chat_template_jinja(template: str | ConversationTemplate) -> str:
    """The Jinja chat template (transformers' ``apply_chat_template``, vLLM) of one of our templates.

    It renders exactly what :func:`~monai_llava_med.conversation.render_conversation` renders, with
    ``{{ bos_token }}`` in front when the template adds BOS (the tokenizer's own BOS is then not added again:
    transformers' and vLLM's chat paths tokenise with ``add_special_tokens=False``). A leading ``system``
    message replaces the template's system prompt. Message contents may be strings, or lists of
    ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` items: the images of a message become one
    ``<image>`` each at its front followed by a newline and the stripped text, as our prompts place them.

    Args:
        template: a registered name or a template object.

    Raises:
        TemplateError: the template has fields or placeholders this generator cannot express.
    """
    tpl = get_template(template)
    unknown = {f.name for f in dataclasses.fields(tpl)} - _JINJA_FIELDS
    if unknown:
        raise TemplateError(f"template {tpl.name!r}: fields {sorted(unknown)} have no chat-template translation")
    where = f"template {tpl.name!r}"
    system_text = _jinja_concat(tpl.system_format, {"system": "system"}, where)
    user = _jinja_concat(tpl.user_format, {"content": "content"}, where)
    answer = _jinja_concat(tpl.answer_format, {"content": "content", "eos": "eos_token"}, where)
    image = json.dumps(IMAGE_PLACEHOLDER)
    lines = [
        f"{{#- LLaVA-Med conversation template {tpl.name!r}, generated by monai-llava-med -#}}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- set first = messages[0]['content'] -%}",
        "{%- set system = first if first is string else first | selectattr('type', 'equalto', 'text')"
        " | map(attribute='text') | join('') -%}",
        "{%- set loop_messages = messages[1:] -%}",
        "{%- else -%}",
        f"{{%- set system = {json.dumps(tpl.system)} -%}}",
        "{%- set loop_messages = messages -%}",
        "{%- endif -%}",
        f"{{%- set system_text = {system_text} if system else '' -%}}",
    ]
    if tpl.add_bos:
        lines.append("{{- bos_token -}}")
    if not tpl.system_in_first_user:
        lines.append("{{- system_text -}}")
    lines += [
        "{%- for message in loop_messages -%}",
        "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}",
        "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}",
        "{%- endif -%}",
        "{%- if message['content'] is string -%}",
        "{%- set content = message['content'] -%}",
        "{%- else -%}",
        "{%- set n_images = message['content'] | selectattr('type', 'equalto', 'image') | list | length -%}",
        "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
        " | join('') -%}",
        f"{{%- set content = (({image} * n_images) ~ '\\n' ~ (text | trim)) if n_images else text -%}}",
        "{%- endif -%}",
    ]
    if tpl.strip_messages:
        lines.append("{%- set content = content | trim -%}")
    lines.append("{%- if message['role'] == 'user' -%}")
    if tpl.round_separator:
        lines.append(f"{{%- if not loop.first -%}}{{{{- {json.dumps(tpl.round_separator)} -}}}}{{%- endif -%}}")
    if tpl.drop_user_text:
        lines.append(f"{{%- set content = {image} * (content.split({image}) | length - 1) -%}}")
    if tpl.system_in_first_user:
        lines.append("{%- if loop.first and system_text -%}{%- set content = system_text ~ content -%}{%- endif -%}")
    lines += [
        f"{{{{- {user} ~ {json.dumps(tpl.assistant_prefix)} -}}}}",
        "{%- elif message['role'] == 'assistant' -%}",
        f"{{{{- {answer} -}}}}",
        "{%- else -%}",
        "{{- raise_exception('Only system, user and assistant roles are supported') -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
    return "\n".join(lines) + "\n"


def serving_tokenizer_files(
    tokenizer: PreTrainedTokenizerBase,
    template: str | ConversationTemplate,
    *,
    model_max_length: int | None = None,
) -> dict[str, str]:
    """The files of a tokenizer folder for serving: ``tokenizer.json``, ``tokenizer_config.json``, chat template.

    ``tokenizer_class`` is ``PreTrainedTokenizerFast`` (loads ``tokenizer.json`` as written in transformers
    4.x and 5.x); the post-processor adds BOS for ``add_special_tokens=True`` exactly when the template does,
    so ``processor(text=prompt)`` gives our ids; no loader-only key (``local_files_only``...) is written. The
    tokenizer object is not modified.

    Args:
        tokenizer: a fast tokenizer prepared with :func:`prepare_tokenizer`.
        template: the conversation template the model was trained with.
        model_max_length: context length to record (default: the tokenizer's).

    Returns:
        file name -> text (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``,
        ``chat_template.json``).

    Raises:
        TemplateError: the template needs a BOS token the tokenizer lacks, or cannot be written as Jinja.
    """
    tpl = get_template(template)
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("a fast (tokenizers-backed) tokenizer is needed for the serving export")
    core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if tpl.add_bos:
        if bos is None or bos_id is None:
            raise TemplateError(f"template {tpl.name!r} needs a BOS token but the tokenizer has none")
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, int(bos_id))]
        )
    else:
        core.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    jinja = chat_template_jinja(tpl)
    config: dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = getattr(tokenizer, name)
        if value is not None:
            config[name] = str(value)
    config.update(
        add_bos_token=tpl.add_bos,
        add_eos_token=False,
        model_max_length=int(model_max_length or tokenizer.model_max_length),
        padding_side=tokenizer.padding_side,
        clean_up_tokenization_spaces=bool(tokenizer.clean_up_tokenization_spaces),
        chat_template=jinja,
    )
    return {
        "tokenizer.json": core.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2) + "\n",
        "chat_template.jinja": jinja,
        "chat_template.json": json.dumps({"chat_template": jinja}, indent=2) + "\n",
    }


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(folder)`` without the loader-only keys (``local_files_only``...) that
    ``from_pretrained`` leaves in ``tokenizer_config.json``.

    Args:
        tokenizer: any Hugging Face tokenizer.
        folder: destination folder.
    """
    tokenizer.save_pretrained(str(folder))
    config_path = Path(folder) / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if LOADER_ONLY_KEYS & set(config):
            config = {k: v for k, v in config.items() if k not in LOADER_ONLY_KEYS}
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
