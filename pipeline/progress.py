"""Progress bars that are live in a terminal and quiet in a log.

:func:`progress_bar` is the one factory the pipeline uses instead of ``tqdm(...)``:

* stderr (or the ``file`` given) is a terminal: a normal live tqdm bar.
* Anything else (``dvc repro`` output piped or redirected, a batch job's log file, CI): at most
  one line about every :data:`QUIET_INTERVAL` seconds per bar, each a whole ``\\n``-terminated line
  (no ``\\r`` redraws, no cursor moves), plus the bar's first and final state. The final state is
  always written when the bar closes, so a log shows how far every loop got and how long it took.
* ``KAMIG_PROGRESS=0`` turns every bar off; ``KAMIG_PROGRESS=1`` forces live bars even off a
  terminal. Unset (or any other value): decided by the stream, as above. A bar its caller
  disabled (``disable=True``) stays disabled, and tqdm's own ``TQDM_*`` variables keep working.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

ENV_VAR = "KAMIG_PROGRESS"
QUIET_INTERVAL = 30.0  # seconds between two lines of one bar off a terminal

# tqdm's cursor movements for nested bars (``position=``): meaningless in a log file.
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class LineStream:
    """A text stream for tqdm that writes each status as its own line.

    tqdm redraws a bar with ``\\r`` (and moves the cursor for nested bars); in a file that piles
    every refresh onto one ever-growing physical line. This wrapper drops those controls and the
    padding, and writes each distinct status once, ending in ``\\n``.
    """

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", _ESCAPES.sub("", text)):
            part = part.rstrip()
            if part and part != self._last:
                self._stream.write(part + "\n")
                self._last = part
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, closed, ...
        return getattr(self._stream, name)


def progress_mode(stream: Any = None) -> str:
    """``"off"``, ``"live"`` or ``"quiet"`` for a bar writing to ``stream`` (default: stderr)."""
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in ("0", "off", "false", "no"):
        return "off"
    if setting in ("1", "on", "true", "yes"):
        return "live"
    return "live" if _is_terminal(sys.stderr if stream is None else stream) else "quiet"


def progress_bar(iterable: Iterable | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), live or quiet as above.

    ``tqdm_kwargs`` are passed on to tqdm; off a terminal ``mininterval`` and ``maxinterval``
    default to :data:`QUIET_INTERVAL` and ``leave`` is forced on (clearing a line means nothing in
    a log, and the final state is what a log is read for).
    """
    stream = tqdm_kwargs.pop("file", None)
    mode = progress_mode(stream)
    if mode == "off":
        tqdm_kwargs["disable"] = True
    elif mode == "quiet":
        tqdm_kwargs.setdefault("mininterval", QUIET_INTERVAL)
        tqdm_kwargs.setdefault("maxinterval", max(QUIET_INTERVAL, tqdm_kwargs["mininterval"]))
        tqdm_kwargs["leave"] = True
        stream = LineStream(sys.stderr if stream is None else stream)
    if stream is not None:
        tqdm_kwargs["file"] = stream
    return tqdm(iterable, **tqdm_kwargs)
