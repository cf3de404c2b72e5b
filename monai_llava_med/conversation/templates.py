# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Conversation templates: how a list of turns becomes the exact prompt string a model was trained on.

A template renders a conversation as a sequence of :class:`Segment` pieces. Joining the pieces gives the
prompt string (``render_conversation``); the pieces also tell the tokeniser which characters are
supervised (the assistant answers and their end token) and where the generation prompt ends.

Reference strings (see ``REFERENCE.md``):

- ``mistral_instruct``: ``[INST] <image>\\nQ1 [/INST] A1 </s>[INST] Q2 [/INST]``
- ``vicuna_v1`` (LLaVA-Med v1.0, the reference's ``conv_vicuna_v1``, separator style TWO):
  ``{system} USER: <image>\\nQ1 ASSISTANT: A1</s> USER: Q2 ASSISTANT:``; the reference writes ``"</s> "``
  after each answer and strips the end, so a conversation that ends with an answer ends in ``</s>``, and it
  strips every message.
- ``plain``: ``<image>{caption}\\n`` (stage-1 alignment: the human text is dropped, only the caption and
  its ``\\n`` end are supervised).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from monai_llava_med.errors import TemplateError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "ConversationTemplate",
    "Segment",
    "Turn",
    "register_template",
    "get_template",
    "list_templates",
    "normalize_turns",
    "place_image_placeholders",
    "render_segments",
    "render_conversation",
]

IMAGE_PLACEHOLDER = "<image>"

_USER_ROLES = {"human", "user"}
_ASSISTANT_ROLES = {"gpt", "assistant", "model"}


@dataclass(frozen=True)
class Turn:
    """One conversation turn.

    Args:
        role: ``"user"`` or ``"assistant"``.
        text: the message; user turns may contain ``<image>`` placeholders.
    """

    role: str
    text: str


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation.

    Args:
        text: the characters of this piece.
        supervised: True for assistant answers and their end token (the loss is computed on them).
        turn: index of the conversation round (user + assistant pair) this piece belongs to; -1 for the
            system prefix.
    """

    text: str
    supervised: bool
    turn: int


@dataclass(frozen=True)
class ConversationTemplate:
    """A conversation format.

    A round renders as ``user_format.format(content=question)`` + ``assistant_prefix`` (end of the
    generation prompt) + ``answer_format.format(content=answer, eos=eos_token)`` (supervised). Rounds after
    the first start with ``round_separator`` (not supervised).

    Args:
        name: registry key.
        system: default system prompt ("" for none).
        system_format: how a non-empty system prompt is written before the first round, ``{system}`` is
            replaced; ignored when the system prompt is empty.
        system_in_first_user: if True the formatted system prompt goes inside the first user message
            (Llama-2 style ``[INST] <<SYS>>...``) instead of before the first round.
        user_format: format of a user message, ``{content}`` is the message.
        assistant_prefix: text after the user message that belongs to the prompt (e.g. ``"ASSISTANT:"``);
            a generation prompt ends right after it.
        answer_format: format of an answer, ``{content}`` is the answer and ``{eos}`` the tokenizer's end
            token; the whole piece is supervised.
        stop_str: the string that ends an answer in generated text (the EOS token for chat templates).
        add_bos: prepend the tokenizer's BOS token when tokenising.
        drop_user_text: keep only the image placeholders of user messages (the ``plain`` template).
        round_separator: text written before the user message of every round but the first (``vicuna_v1``:
            the space of the reference's ``"</s> "``; a trailing one is never written).
        strip_messages: strip surrounding whitespace from every message before formatting (the reference
            does so for separator style TWO).
    """

    name: str
    system: str = ""
    system_format: str = "{system}"
    system_in_first_user: bool = False
    user_format: str = "{content}"
    assistant_prefix: str = ""
    answer_format: str = "{content}{eos}"
    stop_str: str = "</s>"
    add_bos: bool = True
    drop_user_text: bool = False
    round_separator: str = ""
    strip_messages: bool = False


_REGISTRY: dict[str, ConversationTemplate] = {}


def register_template(template: ConversationTemplate, *, overwrite: bool = False) -> ConversationTemplate:
    """Add a template to the registry so it can be referred to by name.

    Args:
        template: the template; its ``name`` is the key.
        overwrite: replace an existing template of the same name instead of raising.

    Returns:
        The template, for chaining.

    Raises:
        TemplateError: a template with this name exists and ``overwrite`` is False, or a format string
            lacks ``{content}``.
    """
    if template.name in _REGISTRY and not overwrite:
        raise TemplateError(f"template {template.name!r} is already registered (pass overwrite=True)")
    for attr in ("user_format", "answer_format"):
        if "{content}" not in getattr(template, attr):
            raise TemplateError(f"template {template.name!r}: {attr} must contain '{{content}}'")
    _REGISTRY[template.name] = template
    return template


def get_template(template: str | ConversationTemplate) -> ConversationTemplate:
    """Look a template up by name (a template object is returned unchanged).

    Args:
        template: a registered name or a :class:`ConversationTemplate`.

    Raises:
        TemplateError: the name is not registered.
    """
    if isinstance(template, ConversationTemplate):
        return template
    if template not in _REGISTRY:
        raise TemplateError(f"unknown conversation template {template!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[template]


def list_templates() -> list[str]:
    """Names of the registered templates, sorted."""
    return sorted(_REGISTRY)


def normalize_turns(turns: str | Sequence[Turn | Mapping[str, str] | tuple[str, str]]) -> list[Turn]:
    """Bring turns from any accepted form into a validated list of :class:`Turn`.

    Accepted forms: a single question string; LLaVA JSON dicts ``{"from": "human"|"gpt", "value": ...}``;
    chat dicts ``{"role": "user"|"assistant", "content": ...}``; ``(role, text)`` tuples; :class:`Turn`.
    Turns must alternate user/assistant and start with a user turn.

    Args:
        turns: the conversation.

    Raises:
        TemplateError: unknown role, non-string text, wrong order, or no turns.
    """
    if isinstance(turns, str):
        turns = [Turn("user", turns)]
    out: list[Turn] = []
    for i, t in enumerate(turns):
        if isinstance(t, Turn):
            role, text = t.role, t.text
        elif isinstance(t, Mapping):
            role = t.get("from", t.get("role"))
            text = t.get("value", t.get("content"))
        elif isinstance(t, tuple) and len(t) == 2:
            role, text = t
        else:
            raise TemplateError(f"turn {i}: expected a dict, a (role, text) tuple or a Turn, got {type(t).__name__}")
        if not isinstance(role, str) or not isinstance(text, str):
            raise TemplateError(f"turn {i}: role and text must be strings, got {role!r} / {type(text).__name__}")
        low = role.lower()
        if low in _USER_ROLES:
            role = "user"
        elif low in _ASSISTANT_ROLES:
            role = "assistant"
        else:
            raise TemplateError(f"turn {i}: unknown role {role!r} (expected human/user or gpt/assistant)")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise TemplateError(f"turn {i}: expected a {expected} turn, got {role} (turns must alternate)")
        out.append(Turn(role, text))
    if not out:
        raise TemplateError("empty conversation")
    return out


def place_image_placeholders(turns: Sequence[Turn], num_images: int) -> list[Turn]:
    """Make the ``<image>`` placeholders agree with the number of images, as LLaVA does.

    - no images: any placeholder is an error;
    - no placeholder: ``"<image>\\n"`` is put in front of the first user message;
    - one placeholder in the first user message: it is moved to the front (``"<image>\\n" + text``),
      LLaVA's training and evaluation layout. With ``num_images = k > 1`` that single placeholder stands
      for k consecutive image blocks (a volume's views, a slide's tiles);
    - several placeholders: their number must equal ``num_images``; they stay where they are.

    Args:
        turns: normalised turns.
        num_images: images that go with the conversation.

    Raises:
        TemplateError: placeholders in assistant turns, or a count that cannot match ``num_images``.
    """
    turns = list(turns)
    counts = [t.text.count(IMAGE_PLACEHOLDER) for t in turns]
    for t, c in zip(turns, counts):
        if c and t.role != "user":
            raise TemplateError("an assistant turn contains an <image> placeholder")
    total = sum(counts)
    if num_images < 0:
        raise TemplateError(f"num_images must be >= 0, got {num_images}")
    if num_images == 0:
        if total:
            raise TemplateError(f"the conversation has {total} <image> placeholder(s) but no image")
        return turns
    if total == 0 or (total == 1 and counts[0] == 1):
        text = turns[0].text.replace(IMAGE_PLACEHOLDER, "").strip()
        turns[0] = Turn("user", f"{IMAGE_PLACEHOLDER}\n{text}")
        return turns
    if total != num_images:
        raise TemplateError(
            f"the conversation has {total} <image> placeholders for {num_images} images "
            "(use one placeholder for all images, or one per image)"
        )
    return turns


def render_segments(
    turns: str | Sequence[Turn | Mapping[str, str] | tuple[str, str]],
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_images: int | None = None,
    system: str | None = None,
    add_generation_prompt: bool = False,
    eos_token: str | None = None,
) -> list[Segment]:
    """Render a conversation into segments (see :func:`render_conversation`).

    Args:
        turns: the conversation (any form accepted by :func:`normalize_turns`).
        template: template name or object.
        num_images: if given, placeholders are checked/placed with :func:`place_image_placeholders`;
            None leaves the text as written.
        system: system prompt overriding the template's.
        add_generation_prompt: the conversation must end with a user turn; the rendering ends where the
            assistant's answer starts.
        eos_token: end token written after each answer (default: the template's ``stop_str``).

    Raises:
        TemplateError: bad turns, or a conversation whose last turn does not fit ``add_generation_prompt``.
    """
    tpl = get_template(template)
    norm = normalize_turns(turns)
    if num_images is not None:
        norm = place_image_placeholders(norm, num_images)
    if add_generation_prompt and norm[-1].role != "user":
        raise TemplateError("add_generation_prompt needs a conversation that ends with a user turn")
    eos = tpl.stop_str if eos_token is None else eos_token
    sys_prompt = tpl.system if system is None else system
    sys_text = tpl.system_format.format(system=sys_prompt) if sys_prompt else ""
    segments: list[Segment] = []
    if sys_text and not tpl.system_in_first_user:
        segments.append(Segment(sys_text, False, -1))
    for i, turn in enumerate(norm):
        rnd = i // 2
        text = turn.text.strip() if tpl.strip_messages else turn.text
        if turn.role == "user":
            content = text
            if tpl.drop_user_text:
                content = IMAGE_PLACEHOLDER * content.count(IMAGE_PLACEHOLDER)
            if i == 0 and sys_text and tpl.system_in_first_user:
                content = sys_text + content
            sep = tpl.round_separator if rnd > 0 else ""
            segments.append(
                Segment(sep + tpl.user_format.format(content=content) + tpl.assistant_prefix, False, rnd)
            )
        else:
            segments.append(Segment(tpl.answer_format.format(content=text, eos=eos), True, rnd))
    return segments


def render_conversation(
    turns: str | Sequence[Turn | Mapping[str, str] | tuple[str, str]],
    template: str | ConversationTemplate = "mistral_instruct",
    *,
    num_images: int | None = None,
    system: str | None = None,
    add_generation_prompt: bool = False,
    eos_token: str | None = None,
) -> str:
    """Render a conversation to the exact prompt string of a template.

    Example: ``render_conversation([("user", "<image>\\nQ1"), ("assistant", "A1"), ("user", "Q2")])``
    gives ``"[INST] <image>\\nQ1 [/INST] A1 </s>[INST] Q2 [/INST]"``. BOS is not part of the string (the
    tokeniser adds it when ``template.add_bos``).

    Args:
        turns: the conversation.
        template: template name or object.
        num_images: see :func:`render_segments`.
        system: system prompt overriding the template's.
        add_generation_prompt: see :func:`render_segments`.
        eos_token: see :func:`render_segments`.
    """
    segs = render_segments(
        turns,
        template,
        num_images=num_images,
        system=system,
        add_generation_prompt=add_generation_prompt,
        eos_token=eos_token,
    )
    return "".join(s.text for s in segs)


register_template(
    ConversationTemplate(
        name="mistral_instruct",
        system="",
        system_format="<<SYS>>\n{system}\n<</SYS>>\n\n",
        system_in_first_user=True,
        user_format="[INST] {content} [/INST]",
        assistant_prefix="",
        answer_format=" {content} {eos}",
        stop_str="</s>",
    )
)
register_template(
    ConversationTemplate(
        name="vicuna_v1",
        system=(
            "A chat between a curious user and an artificial intelligence assistant. "
            "The assistant gives helpful, detailed, and polite answers to the user's questions."
        ),
        system_format="{system} ",
        user_format="USER: {content} ",
        assistant_prefix="ASSISTANT:",
        answer_format=" {content}{eos}",
        stop_str="</s>",
        round_separator=" ",
        strip_messages=True,
    )
)
register_template(
    ConversationTemplate(
        name="plain",
        system="",
        user_format="{content}",
        assistant_prefix="",
        answer_format="{content}\n",
        stop_str="\n",
        drop_user_text=True,
    )
)
