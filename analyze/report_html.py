"""The escaping and number formatting every part of ``report.html`` uses (``report``, ``report_sections``,
``report_figures``): every string from the corpus or the user goes through ``esc``."""

from __future__ import annotations

import html
from typing import Any

from actdict.analyze.report_features import shown


def esc(x: Any, quote: bool = True) -> str:
    """``x`` as HTML text; ``quote=False`` for plotly's labels, which escape no quotes of their own."""
    return html.escape(str(x), quote=quote)


def num(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, float):
        return shown(v)
    return esc(v)



def count(v: Any) -> str:
    """A count with thousands separators, as analyze prints it (20,480): the class table's rows read 7277."""
    return f"{v:,}" if isinstance(v, int) else num(v)

