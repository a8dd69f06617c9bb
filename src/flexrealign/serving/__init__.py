"""Serving: a continuous-batching engine with per-request lam, and an OpenAI-compatible HTTP API over it."""

from flexrealign.serving.engine import Engine, InvalidRequest, RequestOutput, SamplingParams

__all__ = ["Engine", "InvalidRequest", "RequestOutput", "SamplingParams", "create_app"]


def __getattr__(name: str) -> object:
    # the HTTP layer imports FastAPI (an optional dependency); load it only when asked for
    if name == "create_app":
        from flexrealign.serving.api import create_app

        return create_app
    raise AttributeError(name)
