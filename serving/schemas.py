"""The request bodies the server takes, as pydantic models: FastAPI answers 422 naming the field when
one does not fit (serving/app.py words the error).

`/generate` keeps the shape production clients already send and refuses unknown fields. The OpenAI
routes ignore fields they do not use (SDKs send many, e.g. presence_penalty), as vLLM does, but check
the ones they do. `temperature` defaults to 0 (greedy) on every route. The largest `max_tokens` is a
setting (serving.max_tokens): the app checks it, since it is not known when this module is imported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class GenerateRequest(BaseModel):
    """POST /generate: the shape production clients already use."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    system_message: str | None = None
    user_id: str | None = Field(None, min_length=1, max_length=256)
    model: str | None = None  # champion | canary | base | a loaded registry version (v3); empty: routed


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="one completion per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    user: str | None = Field(None, min_length=1, max_length=256)

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "\n".join(part.text for part in self.content if part.type == "text" and part.text)
        return self.content or ""


class ChatRequest(_OpenAIRequest):
    """POST /v1/chat/completions. The served adapters are single-turn: the last user message is the
    question; the system message is recorded with the request but not sent to the model."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _a_user_message(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "user" and m.text.strip() for m in messages):
            raise ValueError("needs at least one user message with text")
        return messages

    @property
    def question(self) -> str:
        return next(m.text for m in reversed(self.messages) if m.role == "user" and m.text.strip())

    @property
    def system_message(self) -> str | None:
        texts = [m.text for m in self.messages if m.role in ("system", "developer") and m.text]
        return "\n".join(texts) or None


class CompletionRequest(_OpenAIRequest):
    """POST /v1/completions: the prompt is continued as given (clients such as tasks/generation.py's
    OpenAICompatibleGenerator send it already in the prompt template)."""

    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one prompt per request (send a list of exactly one, or a string)")
        if not (prompt if isinstance(prompt, str) else prompt[0]).strip():
            raise ValueError("the prompt is empty")
        return prompt

    @property
    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class FeedbackRequest(BaseModel):
    """POST /feedback: joined onto the answered request's log record by request_id."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    thumbs: Literal[1, -1]
    correction: str | None = None


class LoadAdapterRequest(BaseModel):
    """POST /v1/load_lora_adapter, as vLLM takes it."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(pattern=ADAPTER_NAME)
    lora_path: str = Field(min_length=1)


class UnloadAdapterRequest(BaseModel):
    """POST /v1/unload_lora_adapter, as vLLM takes it."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(pattern=ADAPTER_NAME)


class CanaryShareRequest(BaseModel):
    """POST /admin/canary-share: the share of users the canary serves (0 stops its traffic)."""

    model_config = ConfigDict(extra="forbid")

    share: float = Field(ge=0.0, le=1.0)
    canary: str | None = Field(None, min_length=1, description="the canary version the share is meant for (3 or v3); "
                                                                 "refused when the canary alias routes elsewhere")
