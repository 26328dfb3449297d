"""Progress bars for long work (tqdm), or nothing where they would only be noise.

Two things differ from a plain tqdm bar:
- the rate and the ETA count from the end of the first update: the first step of a jitted loop
  includes compiling, and counting it would promise hours for a few minutes' work;
- a terminal that reports a width of 0 (some CI runners and wrappers) gets a fixed width, where
  tqdm would draw nothing at all.

Messages printed while a bar is on screen go through `print_above`, so they land above the bar
instead of on its line.
"""

from __future__ import annotations

import os
import sys

FALLBACK_COLUMNS = 100


class _NoBar:
    n = 0

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def close(self):
        pass


def progress_bar(total: int, initial: int, unit: str, desc: str, enabled: bool = True,
                 file=None, **options):
    """`options` go to tqdm (e.g. unit_scale=True for bytes, delay=1.0)."""
    if not enabled:
        return _NoBar()
    file = file if file is not None else sys.stderr
    size = _terminal_size(file)
    if size is not None and min(size) <= 1:
        # The terminal claims no room at all: draw at a fixed width rather than not at all.
        shape = dict(ncols=FALLBACK_COLUMNS, nrows=20, dynamic_ncols=False)
    else:
        shape = dict(dynamic_ncols=True)
    return _bar_class()(total=total, initial=initial, unit=unit, desc=desc, file=file,
                        **{**shape, **options})


def print_above(message: str, file=None) -> None:
    """Print a line above any progress bar on screen (to stdout unless `file` is given)."""
    from tqdm import tqdm
    tqdm.write(message, file=file if file is not None else sys.stdout)


def close_bars() -> None:
    """Finish every bar still on screen (its last state stays), so that what is printed next,
    say an error after an interruption, starts on a line of its own."""
    if "tqdm" not in sys.modules:
        return
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _terminal_size(file) -> tuple[int, int] | None:
    """(columns, lines) of the terminal `file` writes to, or None when it is not one."""
    try:
        return tuple(os.get_terminal_size(file.fileno()))
    except (AttributeError, OSError, ValueError):
        return None


_BAR_CLASS = None


def _bar_class():
    """tqdm with its rate (and so its ETA) measured from the first update on."""
    global _BAR_CLASS
    if _BAR_CLASS is not None:
        return _BAR_CLASS
    from tqdm import tqdm

    class Bar(tqdm):
        _mark = None   # (count, time) when the first update arrived

        def update(self, n=1):
            displayed = super().update(n)
            if self._mark is None:
                self._mark = (self.n, self._time())
            return displayed

        @property
        def format_dict(self):
            values = super().format_dict
            if self._mark is None:
                values["rate"] = 0.0      # unknown yet: tqdm shows "?"
            else:
                count, since = self._mark
                seconds = self._time() - since
                values["rate"] = (self.n - count) / seconds if seconds > 0 else 0.0
            return values

    _BAR_CLASS = Bar
    return Bar
