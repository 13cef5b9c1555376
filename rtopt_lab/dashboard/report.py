"""A self-contained HTML report of one evaluation.

One file, no external resources (no CDN, no external CSS, no script at all): the style is
inline, the figures are embedded as base64 PNG ``data:`` URIs, and a Content-Security-Policy
meta tag forbids the browser to load anything else, so the report opens the same from a
mail attachment, an MLflow artifact or an air-gapped machine. Every string from the data
is HTML-escaped.

Stable hooks for tests and scrapers:

==============================================  =============================================
``<h1 id="title">``                             the title
``<section id="summary">``                      the summary table ``<table id="summary-table">``
``<tr class="candidate" data-candidate=...>``   one row per candidate (estimate, interval,
                                                difference, lower bound, verdict, phase)
``<section id="identifiability">``              when the evaluation carries it: overlap per
                                                candidate and task type, the never-logged arms
                                                (``<table id="identifiability-table">``)
``<section id="gates">``                        one ``<div class="gate" data-status=...>`` per
                                                verdict, every reason an ``<li class="reason">``
``<section id="figures">``                      ``<img class="plot" id="plot-<slug>" alt=...>``
``<section id="tables">``                       ``<table class="extra" id="table-<slug>">``
``<details id="results-full">``                 the whole evaluate table
==============================================  =============================================
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["figure_png", "render_report", "write_report"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict-improved,.status-pass{color:#1a7f37;font-weight:600}
.verdict-worse,.status-fail{color:#c62828;font-weight:600}
.verdict-not-significant,.status-insufficient-evidence{color:#8a6d00;font-weight:600}
.status-error{color:#6a1b9a;font-weight:600}.verdict-baseline{color:#2166ac;font-weight:600}
.gate{border:1px solid #ddd;border-left:6px solid #999;padding:.4rem .8rem;margin:.6rem 0;border-radius:4px}
.gate-pass{border-left-color:#1a7f37}.gate-fail{border-left-color:#c62828}
.gate-insufficient-evidence{border-left-color:#e0a800}.gate-error{border-left-color:#6a1b9a}
.table-wrap{overflow-x:auto;max-width:100%}td.num{white-space:nowrap}
.gate h3{margin:.2rem 0;font-size:1.05rem}.gate .reasons{margin:.3rem 0}
figure{margin:1rem 0}img.plot{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem}pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _slug(text: str, seen: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "item"
    slug, i = base, 2
    while slug in seen:
        slug, i = f"{base}-{i}", i + 1
    seen.add(slug)
    return slug


def _class(v: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(v).lower()).strip("-")


SIGNIFICANT = 4
_MAX_DECIMALS = 8


def _fmt_number(x: float, digits: int = SIGNIFICANT) -> str:
    """A float in fixed notation: ``digits`` significant digits, thousands separators, never
    scientific notation (80,480 beside 491.8, not 8.048e+04); values of 1,000 or more show
    no decimals, magnitudes below 1e-8 show as ``< 0.00000001``."""
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = min(max(digits - 1 - mag, 0), _MAX_DECIMALS)
    if decimals and abs(round(x, decimals)) >= 10.0 ** (mag + 1):   # 0.99996 rounds to 1.000, not 1.0000
        decimals -= 1
    text = f"{x:,.{decimals}f}"
    if float(text.replace(",", "")) == 0:
        tiny = f"0.{'0' * (_MAX_DECIMALS - 1)}1"
        return f"> −{tiny}" if x < 0 else f"< {tiny}"
    return text


def _fmt(v: Any) -> str:
    """A cell value as text: floats with :data:`SIGNIFICANT` significant digits in fixed
    notation, integers with thousands separators, '—' for missing."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return _fmt_number(float(v))
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    return str(v)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _table(frame: pd.DataFrame, *, table_id: str, cls: str) -> str:
    head = "".join(f"<th scope=\"col\">{_e(c).replace('_', '_<wbr>')}</th>" for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = "".join(f"<td class=\"num\">{_e(_fmt(v))}</td>" if _is_num(v) else f"<td>{_e(_fmt(v))}</td>"
                        for v in row)
        body.append(f"<tr>{cells}</tr>")
    return (f"<div class=\"table-wrap\"><table id=\"{_e(table_id)}\" class=\"{_e(cls)}\"><thead><tr>{head}"
            f"</tr></thead><tbody>{''.join(body)}</tbody></table></div>")


def figure_png(figure: Any, *, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure (rendered by Agg), or the bytes themselves if already PNG."""
    if isinstance(figure, (bytes, bytearray)):
        data = bytes(figure)
    elif hasattr(figure, "savefig"):
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=dpi)
        data = buf.getvalue()
    else:
        raise TypeError(f"a figure must be a matplotlib Figure or PNG bytes; got {type(figure).__name__}")
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("figure bytes are not a PNG image (bad signature)")
    return data


def _pick_estimator(results: pd.DataFrame, estimator: str | None) -> str:
    ests = list(dict.fromkeys(results["estimator"]))
    if estimator is None:
        return "dr" if "dr" in ests else ests[0]
    if estimator not in ests:
        raise ValueError(f"`estimator` {estimator!r} is not in `results`; it has {ests}")
    return estimator


def _phase_text(v: Any) -> str:
    phase = getattr(v, "phase", v)        # a RolloutStatus or a string
    if phase is None:
        return "—"
    share = getattr(v, "share", None)
    return f"{phase} ({100 * share:g} %)" if isinstance(share, float) and math.isfinite(share) else str(phase)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or v is pd.NaT or (isinstance(v, (float, np.floating)) and math.isnan(v)) \
        or (isinstance(v, str) and not v)


def _summary(results: pd.DataFrame, estimator: str, phases: Mapping[str, Any]) -> str:
    """The summary table; a column that is empty for every candidate is left out (named in a note)."""
    t = results.loc[results["estimator"] == estimator]
    level = t["confidence_level"].iloc[0] if "confidence_level" in t.columns and len(t) else None
    pct = f"{100 * level:.0f} %" if level is not None and np.isfinite(level) else ""
    baseline = t["baseline"].dropna().iloc[0] if "baseline" in t.columns and t["baseline"].notna().any() else None
    columns: list[tuple[str, list[str | None]]] = []   # header, then per row the cell html (None: empty)

    def column(header: str, cells: list[str | None]) -> None:
        columns.append((header, cells))

    rows = list(t.to_dict("records"))
    cands = [str(r["candidate"]) for r in rows]
    verdicts = [r.get("verdict") if isinstance(r.get("verdict"), str) and r.get("verdict") else "" for r in rows]

    def num(key: str, cls: str = "num") -> list[str | None]:
        return [None if _missing(r.get(key)) else f"<td class=\"{cls}\">{_e(_fmt(r.get(key)))}</td>" for r in rows]

    def interval(lo: str, hi: str, cls: str = "num") -> list[str | None]:
        return [None if _missing(r.get(lo)) and _missing(r.get(hi)) else
                f"<td class=\"{cls}\">[{_e(_fmt(r.get(lo)))}, {_e(_fmt(r.get(hi)))}]</td>" for r in rows]

    def phase(r: Mapping[str, Any]) -> Any:
        v = phases.get(str(r["candidate"]))
        return v if v is not None else (None if _missing(r.get("phase")) else r.get("phase"))

    column("candidate", [f"<td class=\"name\">{_e(c)}</td>" for c in cands])
    column("estimator", [f"<td>{_e(estimator)}</td>" for _ in rows])
    column("estimate", num("value", "num estimate"))
    column(f"{pct} interval".strip(), interval("ci_low", "ci_high", "num interval"))
    column("difference vs baseline", num("diff", "num diff"))
    column("difference interval", interval("diff_ci_low", "diff_ci_high"))
    column("one-sided lower bound", num("lower_bound", "num lower-bound"))
    column("verdict", [f"<td class=\"verdict verdict-{_e(_class(v))}\">{_e(v)}</td>" if v else None
                       for v in verdicts])
    column("phase", [None if phase(r) is None else f"<td class=\"phase\">{_e(_phase_text(phase(r)))}</td>"
                     for r in rows])
    column("ESS", num("ess"))
    column("flags", [f"<td>{_e(_fmt(r.get('flags')))}</td>" if not _missing(r.get("flags")) and r.get("flags")
                     else None for r in rows])
    kept = [(h, cells) for h, cells in columns if any(c is not None for c in cells)]
    dropped = [h for h, cells in columns if all(c is None for c in cells)]
    body = []
    for i, cand in enumerate(cands):
        cells = "".join(cells[i] or "<td>—</td>" for _, cells in kept)
        body.append(f"<tr class=\"candidate\" data-candidate=\"{_e(cand)}\" "
                    f"data-verdict=\"{_e(verdicts[i])}\">{cells}</tr>")
    ths = "".join(f"<th scope=\"col\">{_e(h)}</th>" for h, _ in kept)
    n = results.attrs.get("n", int(t["n"].iloc[0]) if "n" in t.columns and len(t) else None)
    if baseline is not None:
        base = f"baseline: {_e(baseline)}."
        if any(verdicts):
            base += (" The verdict is one-sided with Bonferroni bounds (improved when the lower bound of "
                     "the difference is above 0).")
    else:
        base = "no baseline compared: policy values only."
    gone = f" Not shown (empty for every candidate): {_e(', '.join(dropped))}." if dropped else ""
    note = (f"<p class=\"meta\" id=\"summary-note\">Estimator {_e(estimator)} on {_e(_fmt(n))} logged "
            f"decisions; {base}{gone}</p>")
    return (f"<section id=\"summary\"><h2>Summary</h2>{note}<div class=\"table-wrap\"><table id=\"summary-table\" "
            f"class=\"summary\"><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>")


def _gates(gates: Any) -> str:
    if gates is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(gates, Mapping):
        items = [(str(k), v) for k, v in gates.items()]
    elif isinstance(gates, Sequence) and not isinstance(gates, str):
        items = [(getattr(v, "gate", f"gate {i}"), v) for i, v in enumerate(gates)]
    else:
        items = [(getattr(gates, "gate", "gate"), gates)]
    blocks = []
    seen: set[str] = set()
    for label, v in items:
        if not all(hasattr(v, a) for a in ("gate", "status", "reasons")):
            raise TypeError(f"`gates` must hold GateVerdict objects; got {type(v).__name__} for {label!r}")
        status = str(v.status)
        reasons = "".join(f"<li class=\"reason\">{_e(r)}</li>" for r in v.reasons) or \
            "<li class=\"no-reason\">no reasons: every check held</li>"
        metrics = getattr(v, "metrics", None) or {}
        sub = [(g, m["status"]) for g, m in metrics.items() if isinstance(m, Mapping) and "status" in m]
        sub_html = ""
        if sub:
            lis = "".join(f"<li data-gate=\"{_e(g)}\">{_e(g)}: <span class=\"status-{_e(_class(s))}\">{_e(s)}</span></li>"
                          for g, s in sub)
            sub_html = f"<ul class=\"subgates\">{lis}</ul>"
        detail = ""
        if metrics:
            text = json.dumps(metrics, indent=1, sort_keys=True, default=_fmt)
            detail = f"<details><summary>metrics</summary><pre>{_e(text)}</pre></details>"
        title = label if label == v.gate else f"{label} — {v.gate}"
        blocks.append(f"<div class=\"gate gate-{_e(_class(status))}\" id=\"gate-{_e(_slug(label, seen))}\" "
                      f"data-gate=\"{_e(v.gate)}\" data-status=\"{_e(status)}\"><h3>{_e(title)}: "
                      f"<span class=\"status status-{_e(_class(status))}\">{_e(status)}</span></h3>{sub_html}<ul class=\"reasons\">{reasons}</ul>"
                      f"{detail}</div>")
    body = "".join(blocks) or "<p class=\"meta none\">No gate was run.</p>"
    return f"<section id=\"gates\"><h2>Gates</h2>{body}</section>"


def _figures(figures: Any, dpi: int) -> str:
    if figures is None:
        items: list[tuple[str, Any]] = []
    elif isinstance(figures, Mapping):
        items = [(str(k), v) for k, v in figures.items()]
    else:
        items = [(str(k), v) for k, v in figures]
    seen: set[str] = set()
    blocks = []
    for caption, fig in items:
        data = base64.b64encode(figure_png(fig, dpi=dpi)).decode("ascii")
        slug = _slug(caption, seen)
        blocks.append(f"<figure class=\"figure\" id=\"figure-{slug}\"><img class=\"plot\" id=\"plot-{slug}\" "
                      f"alt=\"{_e(caption)}\" src=\"data:image/png;base64,{data}\">"
                      f"<figcaption>{_e(caption)}</figcaption></figure>")
    body = "".join(blocks) or "<p class=\"meta none\">No figures.</p>"
    return f"<section id=\"figures\"><h2>Figures</h2>{body}</section>"


def _extra(tables: Any) -> str:
    if not tables:
        return ""
    items = tables.items() if isinstance(tables, Mapping) else tables
    seen: set[str] = set()
    blocks = []
    for name, frame in items:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"`extra_tables[{name!r}]` must be a DataFrame; got {type(frame).__name__}")
        slug = _slug(name, seen)
        blocks.append(f"<h3>{_e(name)}</h3>{_table(frame, table_id=f'table-{slug}', cls='extra')}")
    return f"<section id=\"tables\"><h2>Tables</h2>{''.join(blocks)}</section>"


def _identifiability(ident: Any) -> str:
    """What the log supports: overlap per candidate and task type, the arms never logged."""
    if ident is None:
        return ""
    t = ident.to_frame()
    incomplete = t.loc[t["overlap"] < 1.0 - 1e-9]
    notes = []
    if ident.deterministic:
        notes.append("Every call used one fixed arm per task type: off-policy evaluation can judge only "
                     "candidates that play those arms; plan exploration with <code>rtopt plan exploration</code>.")
    if len(incomplete):
        notes.append("Where a candidate's overlap is below 1, IPS/DR verdicts are <b>insufficient_evidence</b> "
                     "(no logged rows for that mass) and DM's value is a model-based extrapolation.")
    else:
        notes.append("Every candidate plays only arms the log played (overlap 1 in every task type).")
    text = "".join(f"<p class=\"note\">{n}</p>" for n in notes)
    return (f"<section id=\"identifiability\"><h2>Identifiability</h2>{text}"
            f"{_table(t, table_id='identifiability-table', cls='identifiability')}</section>")


def render_report(*, title: str, results: pd.DataFrame, gates: Any = None, figures: Any = None,
                  extra_tables: Any = None, phases: Mapping[str, Any] | None = None,
                  estimator: str | None = None, description: str | None = None,
                  generated_at: datetime | None = None, dpi: int = 100) -> str:
    """The report as one HTML string (see :func:`write_report` for the parameters)."""
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"`title` must be a non-empty string; got {title!r}")
    from rtopt_lab.ope.result import pooled_frame

    ident = getattr(results, "identifiability", None)
    results = pooled_frame(results)
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"`results` must be what evaluate() returns (or its table); got {type(results).__name__}")
    missing = [c for c in ("candidate", "estimator", "value", "ci_low", "ci_high") if c not in results.columns]
    if missing:
        raise ValueError(f"`results` is missing column(s) {missing}; pass the table evaluate() returns")
    if len(results) == 0:
        raise ValueError("`results` has no rows")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise ValueError(f"`dpi` must be an int in [20, 600]; got {dpi!r}")
    est = _pick_estimator(results, estimator)
    when = (generated_at or datetime.now(UTC)).isoformat(timespec="seconds")
    desc = f"<p class=\"description\">{_e(description)}</p>" if description else ""
    if "estimated_pscore" in results.columns and results["estimated_pscore"].fillna(False).astype(bool).any():
        desc += ("<p class=\"description\" id=\"estimated-pscore\">Estimated propensities: the weights use a "
                 "fitted model of the logger, not logged ones; weaker evidence (the gates add a penalty).</p>")
    full = _table(results.drop(columns=[c for c in ("baseline",) if c in results.columns]),
                  table_id="results-table", cls="results")
    parts = [
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<meta name=\"generator\" content=\"{_GENERATOR}\">",
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1 id=\"title\">{_e(title)}</h1><p class=\"meta\" id=\"generated\">Generated {_e(when)} "
        f"by rtopt-lab</p>{desc}</header><main>",
        _summary(results, est, phases or {}),
        _identifiability(ident),
        _gates(gates),
        _figures(figures, dpi),
        _extra(extra_tables),
        f"<details id=\"results-full\"><summary>All estimates ({len(results)} rows)</summary>{full}</details>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


_GENERATOR = "rtopt-lab report"


def _ours(path: Path) -> bool:
    """Whether ``path`` is a report this module wrote (so it may be replaced)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2048)
    except OSError:
        return False
    return f'<meta name="generator" content="{_GENERATOR}">'.encode() in head


def write_report(path: str | os.PathLike[str], *, title: str, results: pd.DataFrame, gates: Any = None,
                 figures: Any = None, extra_tables: Any = None, phases: Mapping[str, Any] | None = None,
                 estimator: str | None = None, description: str | None = None,
                 generated_at: datetime | None = None, dpi: int = 100) -> Path:
    """Write a self-contained HTML report of one evaluation; return its path.

    Parameters
    ----------
    path : path
        The HTML file (parent directories are created); written atomically (temporary
        file, then rename), so a reader never sees half a report.
    title : str
    results : Evaluation or DataFrame
        What :func:`~rtopt_lab.ope.evaluate` returns (or its table); an Evaluation adds
        the identifiability section (overlap per candidate and task type, the arms never
        logged).
    gates : mapping of label to GateVerdict, sequence of GateVerdict, or one, optional
        Each verdict with its status and every reason (combined verdicts list their
        sub-gates too).
    figures : mapping of caption to Figure (or PNG bytes), or sequence of pairs, optional
        Embedded as base64 PNG ``<img class="plot">`` with the caption as alt text.
    extra_tables : mapping of name to DataFrame, optional
        E.g. the drift table, the Pareto points, the attribution.
    phases : mapping of candidate to phase name or RolloutStatus, optional
        The summary's phase column.
    estimator : str, optional
        The estimator of the summary table; default ``"dr"`` when present, else the first.
    description : str, optional
        A paragraph under the title.
    generated_at : datetime, optional
        Default now (UTC); pass one for byte-identical reports.
    dpi : int, default 100
        Resolution of the embedded figures.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        When ``path`` does not end in ``.html`` or ``.htm``.
    FileExistsError
        When ``path`` exists and is not a report written by this function: a report only
        ever replaces an earlier report, never another file.
    """
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"`path` must name an .html file; got {str(path)!r}")
    if (out.exists() or out.is_symlink()) and (out.is_symlink() or not out.is_file() or not _ours(out)):
        raise FileExistsError(f"`path` {str(out)!r} exists and is not an rtopt-lab report: it is never "
                              "replaced; choose another path or move that file")
    text = render_report(title=title, results=results, gates=gates, figures=figures, extra_tables=extra_tables,
                         phases=phases, estimator=estimator, description=description,
                         generated_at=generated_at, dpi=dpi)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
