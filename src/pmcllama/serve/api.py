"""Request bodies of the OpenAI API that the server accepts, checked before any work.

Unknown fields are ignored as OpenAI's own server ignores fields it does not know; fields of
features this server does not have (tools, JSON mode, logit bias, penalties, chat logprobs)
are refused with a 400 naming the field, never silently dropped.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4
MAX_N = 8


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: Union[str, list[str], None] = Field(None, validate_default=True)
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return [s for s in stops if s]

    def unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"'{name}' is not supported by this server (use 0)", name)
        if self.logit_bias:
            raise ApiError(400, "'logit_bias' is not supported by this server", "logit_bias")


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict[str, Any]], None]

    def text(self, index: int) -> str:
        """The content as text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
        if isinstance(self.content, str):
            return self.content
        parts = self.content or []
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in parts):
            raise ApiError(400, "only text content parts are supported", f"messages[{index}].content")
        return "".join(p["text"] for p in parts)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Optional[list] = None
    tool_choice: Any = None
    functions: Optional[list] = None
    response_format: Optional[dict] = None
    logprobs: Optional[bool] = None

    def unsupported(self) -> None:
        super().unsupported()
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise ApiError(400, f"'{name}' (function calling) is not supported by this server", name)
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise ApiError(400, "only response_format {type: text} is supported", "response_format")
        if self.logprobs:
            raise ApiError(400, "logprobs are supported on /v1/completions only", "logprobs")

    @property
    def limit(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    suffix: Optional[str] = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    def unsupported(self) -> None:
        super().unsupported()
        if self.suffix:
            raise ApiError(400, "'suffix' (insertion) is not supported by this server", "suffix")

    @property
    def limit(self) -> Optional[int]:
        return self.max_tokens

    def prompts(self) -> list[Union[str, list[int]]]:
        """The prompts of the request: one text or token list each."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


def validation_error(err) -> ApiError:
    """A pydantic ValidationError as a 400 naming the first bad field."""
    first = err.errors()[0]
    loc = ".".join(str(x) if not isinstance(x, int) else f"[{x}]" for x in first["loc"]).replace(".[", "[")
    msg = str(first["msg"]).removeprefix("Value error, ")
    return ApiError(400, f"{loc}: {msg}" if loc else msg, loc or None)
