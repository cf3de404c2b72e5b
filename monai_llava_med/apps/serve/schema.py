# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Request bodies of the OpenAI chat-completions API, and their translation into a question for the predictor.

Only what the model can honour is accepted: ``n`` must be 1, one image per conversation (it goes with the first
user turn, as in training), ``system`` messages are accepted and not used (the model keeps its template's system
prompt). Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .api_errors import ApiError
from .settings import ServeSettings

__all__ = [
    "TextPart",
    "ImageUrl",
    "ImagePart",
    "ChatMessage",
    "StreamOptions",
    "ChatCompletionRequest",
    "ViewsRequest",
    "Conversation",
    "to_conversation",
]


class TextPart(BaseModel):
    """``{"type": "text", "text": ...}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ImageUrl(BaseModel):
    """``{"url": "data:..." | "file:///...", "detail"?}``."""

    model_config = ConfigDict(extra="ignore")
    url: str
    detail: str | None = None


class ImagePart(BaseModel):
    """``{"type": "image_url", "image_url": {"url": ...}}`` (a bare string ``image_url`` is accepted too)."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageUrl | str

    @property
    def url(self) -> str:
        """The URL, whichever form was sent."""
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class ChatMessage(BaseModel):
    """One message: ``content`` is a string or a list of text and image parts."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart | ImagePart] | None = None


class StreamOptions(BaseModel):
    """``{"include_usage": true}`` adds a last chunk with the usage counts."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The body of ``POST /v1/chat/completions``."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    user: str | None = None


class ViewsRequest(BaseModel):
    """The body of ``POST /v1/views``: the image whose model views are wanted."""

    model_config = ConfigDict(extra="ignore")
    image_url: ImageUrl | str

    @property
    def url(self) -> str:
        """The URL, whichever form was sent."""
        return self.image_url if isinstance(self.image_url, str) else self.image_url.url


class Conversation(BaseModel):
    """A request translated for the predictor.

    Attributes:
        turns: ``{"role", "content"}`` dicts, user and assistant only, ending with a user turn.
        image_url: the conversation's image URL, if any.
        image_param: the request field the image came from.
        max_tokens: answer length bound.
        do_sample: sample (``temperature > 0`` given) or greedy.
        temperature: sampling temperature.
        top_p: nucleus mass.
        stop: stop strings.
    """

    turns: list[dict[str, str]]
    image_url: str | None
    image_param: str | None
    max_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    stop: tuple[str, ...]

    @property
    def question(self) -> str | list[dict[str, str]]:
        """What :class:`~monai_llava_med.engines.PrepareVqaItem` takes: the question alone, or all turns."""
        return self.turns[0]["content"] if len(self.turns) == 1 else self.turns


def to_conversation(req: ChatCompletionRequest, settings: ServeSettings) -> Conversation:
    """Check a request against the limits and turn it into a :class:`Conversation`.

    Args:
        req: the parsed body.
        settings: the server's limits.

    Raises:
        ApiError: 400 for what the model cannot honour (``n`` > 1, two images, no final user turn...).
    """
    if req.n != 1:
        raise ApiError(400, "only n=1 is supported", "n", "unsupported_parameter")
    if len(req.messages) > settings.max_messages:
        raise ApiError(400, f"at most {settings.max_messages} messages per request", "messages", "too_many_messages")
    turns: list[dict[str, str]] = []
    image_url, image_param = None, None
    for i, msg in enumerate(req.messages):
        if msg.role in ("system", "developer"):
            continue
        parts = [TextPart(type="text", text=msg.content)] if isinstance(msg.content, str) else (msg.content or [])
        texts: list[str] = []
        for j, part in enumerate(parts):
            if isinstance(part, ImagePart):
                if msg.role != "user":
                    raise ApiError(400, "images go in user messages", f"messages.{i}.content.{j}", "invalid_image_url")
                if image_url is not None:
                    raise ApiError(400, "one image per conversation (start a new one for another image)",
                                   f"messages.{i}.content.{j}", "too_many_images")
                image_url, image_param = part.url, f"messages.{i}.content.{j}"
            else:
                texts.append(part.text)
        text = "\n".join(t for t in texts if t)
        if turns and turns[-1]["role"] == msg.role:  # consecutive messages of one role are one turn
            turns[-1]["content"] = f"{turns[-1]['content']}\n{text}" if text else turns[-1]["content"]
        else:
            turns.append({"role": msg.role, "content": text})
    if not turns or turns[-1]["role"] != "user" or turns[0]["role"] != "user":
        raise ApiError(400, "the conversation must start and end with a user message", "messages", "invalid_messages")
    if not turns[-1]["content"].strip():
        raise ApiError(400, "the last user message has no text", "messages", "invalid_messages")
    max_tokens = req.max_completion_tokens or req.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        raise ApiError(400, f"max_tokens must be at most {settings.max_tokens_limit}", "max_tokens", "invalid_value")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > settings.max_stop or any(not s or len(s) > 64 for s in stop):
        raise ApiError(400, f"at most {settings.max_stop} non-empty stop strings of up to 64 characters", "stop",
                       "invalid_value")
    do_sample = bool(req.temperature)
    return Conversation(
        turns=turns,
        image_url=image_url,
        image_param=image_param,
        max_tokens=max_tokens,
        do_sample=do_sample,
        temperature=float(req.temperature or 1.0),
        top_p=float(req.top_p if req.top_p is not None else 1.0),
        stop=stop,
    )
