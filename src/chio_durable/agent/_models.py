"""Real models for the examples and your own scripts: say what to install instead of a traceback."""

from __future__ import annotations

import importlib

__all__ = ["MODEL_EXTRAS", "model_setup_problem"]

MODEL_EXTRAS: dict[str, tuple[str, str]] = {
    # provider prefix of "provider:model" -> (the module its client needs, chio-durable's extra)
    "openai": ("openai", "openai"),
    "openai-chat": ("openai", "openai"),
    "openai-responses": ("openai", "openai"),
    "anthropic": ("anthropic", "anthropic"),
}
"""The providers chio-durable has an extra for (``pip install "chio-durable[openai]"``...)."""


def model_setup_problem(model: str) -> str | None:
    """Tell why a model cannot be used here, without making a request.

    A missing provider client names the extra to install; anything else pydantic-ai refuses when it
    builds the model (an unknown provider, a missing API key) is returned as its message. Builds the
    model client only.

    Args:
        model: the model's name (``"openai:gpt-4o"``).

    Returns:
        The reason in a sentence, or None if the model can be used.
    """
    provider = model.split(":", 1)[0] if ":" in model else ""
    if provider in MODEL_EXTRAS:
        module, extra = MODEL_EXTRAS[provider]
        try:
            importlib.import_module(module)
        except ImportError:
            return (
                f"model {model!r} needs the {module!r} client library, which is not installed: "
                f'pip install "chio-durable[{extra}]"'
            )
    from pydantic_ai.exceptions import UserError
    from pydantic_ai.models import infer_model

    try:
        infer_model(model)
    except ImportError as err:
        return f"model {model!r} needs a client library that is not installed: {err}"
    except (UserError, ValueError) as err:
        return f"model {model!r} cannot be used: {err}"
    return None
