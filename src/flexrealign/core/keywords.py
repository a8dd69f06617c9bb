"""Refuse, don't drop: an unknown keyword is an error that names the keyword and its closest known match.

Python 3.11 says "unexpected keyword argument 'lamda'" but not "did you mean 'lam'?", and a function that
passes **kwargs on would take the typo silently. Torch-free, so configs and the CLI can use it.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
# With **kwargs passed on (to Hugging Face), only a near-certain typo of an own parameter is refused: the
# callee's own keywords are open-ended, and it refuses what it does not know itself.
PASSTHROUGH_CUTOFF = 0.8
MAX_LISTED = 30


def close_match_hint(key: str, names: Iterable[str]) -> str:
    """The "; did you mean 'x'?" suffix for `key` among `names`, or a list of the names when none is close.

    Args:
        key: the unknown name.
        names: the known names.

    Returns:
        The suffix to append to an error message (a long list, such as TrainingArguments' fields, is left
        to --help and the docs).
    """
    names = list(names)
    close = closest(key, names)
    if close is not None:
        return f"; did you mean {close!r}?"
    return f"; known keywords: {', '.join(names)}" if len(names) <= MAX_LISTED else ""


def closest(key: str, names: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name `key` is most likely a typo of, or None.

    Of difflib's close matches, the one sharing the longest start with `key` wins: typos land mid-word, so
    "lamda" means "lam" rather than TRL's "lmbda" (which difflib alone ranks higher).
    """
    close = difflib.get_close_matches(key, list(names), n=3, cutoff=cutoff)
    return max(close, key=lambda name: len(os.path.commonprefix([key, name])), default=None)


def unknown_keyword_error(where: str, key: str, names: Iterable[str]) -> TypeError:
    """The TypeError for keyword `key` given to `where` (e.g. "generate()"), naming the closest of `names`."""
    return TypeError(f"{where} got an unexpected keyword argument {key!r}{close_match_hint(key, names)}")


def keyword_names(func: Callable[..., Any]) -> tuple[list[str], bool]:
    """The names `func` takes as keywords, and whether it also takes **kwargs."""
    params = inspect.signature(func).parameters.values()
    names = [p.name for p in params if p.kind in _NAMED and p.name not in ("self", "cls")]
    return names, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def refuse_unknown_keywords(obj: T | None = None, *, also: Callable[..., Any] | None = None) -> Any:
    """Decorate a function, or a class (its `__init__`), so an unknown keyword names its close match.

    Args:
        obj: the function or class (the decorator may also be called with options only).
        also: a function that the decorated one passes its **kwargs to (`chat` -> `generate`): its keywords
            are known too, and any other keyword is refused.

    Returns:
        The decorated function or class; behaviour is unchanged for known keywords.

    Raises:
        TypeError: (from the decorated callable) on an unknown keyword, naming the closest known one.
    """
    if obj is None:
        return functools.partial(refuse_unknown_keywords, also=also)
    if isinstance(obj, type):
        obj.__init__ = _checked(obj.__init__, f"{obj.__name__}()", also)  # type: ignore[misc]
        return obj
    return _checked(obj, f"{obj.__qualname__}()", also)


def _checked(func: Callable[..., Any], where: str, also: Callable[..., Any] | None) -> Callable[..., Any]:
    names, open_ended = keyword_names(func)
    if also is not None:
        names += [n for n in keyword_names(also)[0] if n not in names]
        open_ended = False
    known = frozenset(names)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for key in kwargs.keys() - known:
            # Open-ended: only a near-certain typo of an own keyword is refused, the rest is passed on.
            if not open_ended or closest(key, names, PASSTHROUGH_CUTOFF) is not None:
                raise unknown_keyword_error(where, key, names)
        return func(*args, **kwargs)

    return wrapper
