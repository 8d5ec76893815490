"""The verdict type of every check: one `Row` per tensor (or property of a layer), a `Report` of rows.

`charmlp gradcheck`, `charmlp exercise check` and `charmlp exercise check-layer` all build these: a row
is exact / approximate / wrong / wrong shape / missing / skipped, with its max difference, relative
error and a one-line diagnosis; a report prints as an aligned table, as one JSON object, or as an
HTML table in Jupyter. `judge` is the one comparison behind every row's status (tensor methods only:
this module imports no torch).
"""

from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field

# statuses, worst first; a check passes when every row is missing, skipped, approximate or exact
STATUSES = ("error", "missing", "wrong shape", "wrong", "approximate", "exact", "skipped")
PASSING = ("missing", "approximate", "exact", "skipped")


def shape_text(shape: tuple[int, ...] | None) -> str:
    """`3×27`, `scalar` for (), empty for an unknown shape."""
    return "" if shape is None else ("×".join(map(str, shape)) or "scalar")


def json_float(x: float | None) -> float | None:
    """`x`, or None where it is inf or nan (JSON has neither)."""
    return x if x is None or math.isfinite(x) else None


def maxdiff(got, want) -> float:
    """max|got − want| of two tensors of one shape (0 for empty ones)."""
    return (got - want).abs().max().item() if got.numel() else 0.0


def close(got, want, rel: float, scale: float | None = None) -> bool:
    """max|got − want| ≤ rel · scale (scale: max|want| unless given); False for another shape."""
    if tuple(got.shape) != tuple(want.shape):
        return False
    s = (want.abs().max().item() if want.numel() else 0.0) if scale is None else scale
    return maxdiff(got, want) <= rel * max(s, 1e-30)


def judge(got, want, rel: float, scale: float | None = None) -> tuple[str, float, float]:
    """(status, maxdiff, rel_err) of tensor `got` against `want` of the same shape: exact (bitwise
    equal), approximate (max|got − want| ≤ rel · scale, scale = max|want| unless given), or wrong.

    The tolerance is absolute and scaled to the tensor — torch.allclose(got, want, rtol=0,
    atol=rel·scale) — so entries small only by cancellation are judged fairly."""
    md = maxdiff(got, want)
    if scale is None:
        scale = want.abs().max().item() if want.numel() else 0.0
    rel_err = md / scale if scale > 0 else (0.0 if md == 0 else math.inf)
    if got.equal(want):
        return "exact", md, rel_err
    approx = bool(got.allclose(want, rtol=0.0, atol=rel * scale)) and rel_err <= rel
    return ("approximate" if approx else "wrong"), md, rel_err


@dataclass
class Row:
    """One tensor's (or one property of a layer's) verdict and what is wrong with it."""

    name: str  # e.g. dlogprobs, weight.grad, "training output", "[2] Linear.weight"
    status: str  # missing | wrong shape | wrong | approximate | exact | skipped
    shape: tuple[int, ...] | None = None  # the expected shape
    got_shape: tuple[int, ...] | None = None
    maxdiff: float | None = None
    diagnosis: str = ""  # one sentence; empty when nothing needs saying
    kind: str = ""  # machine-readable cause: factor, sign, transposed, branch, inherited, keepdim, batch-size, …
    rel_err: float | None = None  # maxdiff / max|reference|
    section: str = ""  # the part of a check the row belongs to (gradcheck: atomic | fused | layer)
    note: str = ""  # a pointer to one of the report's notes ("note 2")

    @property
    def ok(self) -> bool:
        return self.status in PASSING

    @property
    def exact(self) -> bool:
        return self.status == "exact"

    @property
    def approx(self) -> bool:
        """Within the tolerance (exact rows are too)."""
        return self.status in ("exact", "approximate")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        d["got_shape"] = None if self.got_shape is None else list(self.got_shape)
        d["maxdiff"], d["rel_err"] = json_float(self.maxdiff), json_float(self.rel_err)
        d["exact"], d["approx"] = self.exact, self.approx
        return d


NUMERIC = ("maxdiff", "rel_err")  # right-aligned columns


def cell(column: str, r: Row) -> str:
    """A row's text in one of a table's columns: shape, status, exact, approx, maxdiff, rel_err."""
    if column == "shape":
        return shape_text(r.shape)
    if column in NUMERIC:
        v = getattr(r, column)
        return "" if v is None else f"{v:.1e}"
    return str(getattr(r, column))


@dataclass
class Report:
    """Rows of one check; `error` is a failure that stopped it (the learner's exception, a timeout).

    `sections` (section → heading, in order) groups the rows under headings; `settings` are the
    check's own settings, kept in its JSON (gradcheck: dtype, seed, batch size, …)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    sections: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    columns = (("shape", 10), ("status", 13), ("maxdiff", 9))  # the table's columns after the name, with widths
    text_heading = "  diagnosis"  # the heading of the free text after them (`row_text`)

    @property
    def ok(self) -> bool:
        """True when nothing ran into an error and every filled-in row is at least approximate."""
        return self.error is None and all(r.ok for r in self.rows)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def section(self, name: str) -> list[Row]:
        return [r for r in self.rows if r.section == name]

    @property
    def summary(self) -> str:
        done = [r for r in self.rows if r.status not in ("missing", "skipped")]
        good = [r for r in done if r.ok]
        if self.error:
            return f"stopped: {self.error}"
        bad = [r.name for r in done if not r.ok and r.kind != "inherited"]
        follow = sum(1 for r in done if not r.ok and r.kind == "inherited")
        head = f"{len(good)} of {sum(r.status != 'skipped' for r in self.rows)} correct"
        if bad or follow:
            return head + f"; fix: {', '.join(bad) or '(see above)'}" + (f" (the {follow} other wrong rows follow from them)" if follow else "")
        return head + ("" if done else " (nothing filled in yet)")

    def to_dict(self) -> dict:
        return {"title": self.title, "ok": self.ok, "error": self.error, **self.settings,
                "rows": [r.to_dict() for r in self.rows], "notes": list(self.notes), "summary": self.summary}

    # ── text ──────────────────────────────────────────────────────────────────────────────────

    def header_lines(self) -> list[str]:
        return [self.title]

    def note_lines(self) -> list[str]:
        return [f"note: {n}" for n in self.notes]

    def row_text(self, r: Row) -> str:
        """The free text after a row's columns: its diagnosis."""
        return f"  {r.diagnosis}"

    def divider(self, r: Row) -> str | None:
        """A line to print above row `r` (none by default)."""
        return None

    def table_lines(self, rows: list[Row], width: int) -> list[str]:
        def fit(text: str, column: str, w: int) -> str:
            return f"{text:>{w}}" if column in NUMERIC else f"{text:<{w}}"

        # the shape column grows for a shape longer than its width (a 5-D gradient), one space kept
        columns = [(c, max(w, *(len(shape_text(r.shape)) + 1 for r in rows)) if c == "shape" and rows else w)
                   for c, w in self.columns]
        lines = [f"{'name':<{width}}" + "".join(fit(c, c, w) for c, w in columns) + self.text_heading]
        for r in rows:
            if (d := self.divider(r)) is not None:
                lines.append(d)
            lines.append((f"{r.name:<{width}}" + "".join(fit(cell(c, r), c, w) for c, w in columns) + self.row_text(r)).rstrip())
        return lines

    def format_text(self) -> str:
        lines = self.header_lines()
        if self.rows:
            width = max(12, *(len(r.name) + 2 for r in self.rows))
            if self.sections:
                for sec, heading in self.sections.items():
                    rows = self.section(sec)
                    if rows:
                        lines += ["", heading, *self.table_lines(rows, width)]
            else:
                lines += self.table_lines(self.rows, width)
        lines += self.note_lines()
        lines.append(self.summary)
        return "\n".join(lines)

    __str__ = format_text

    def __repr__(self) -> str:
        return self.format_text()

    def _repr_html_(self) -> str:
        colours = {"exact": "#1a7f37", "approximate": "#1a7f37", "missing": "#777", "skipped": "#777"}
        e = html.escape
        out = [f"<div><b>{e(self.title)}</b>", "<table><tr><th>name</th><th>shape</th><th>status</th>"
               "<th>maxdiff</th><th style='text-align:left'>diagnosis</th></tr>"]
        for r in self.rows:
            c = colours.get(r.status, "#c62828")
            md = "" if r.maxdiff is None else f"{r.maxdiff:.1e}"
            out.append(f"<tr><td><code>{e(r.name)}</code></td><td>{e(shape_text(r.shape))}</td>"
                       f"<td style='color:{c}'>{e(r.status)}</td><td>{md}</td>"
                       f"<td style='text-align:left'>{e(r.diagnosis)}</td></tr>")
        out.append("</table>")
        out += [f"<p>note: {e(n)}</p>" for n in self.notes]
        out.append(f"<p><b>{e(self.summary)}</b></p></div>")
        return "\n".join(out)
