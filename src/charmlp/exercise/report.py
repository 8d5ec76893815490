"""The verdict of an exercise check: rows shown as aligned text, an HTML table in Jupyter, or JSON."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field

from ..verdict import json_float, shape_text

# statuses, worst first; a check passes when every row is missing, approximate or exact
STATUSES = ("error", "missing", "wrong shape", "wrong", "approximate", "exact")
PASSING = ("missing", "approximate", "exact", "skipped")


@dataclass
class Row:
    """One gradient (or one property of a layer) and what is wrong with it."""

    name: str  # e.g. dlogprobs, or "training output"
    status: str  # missing | wrong shape | wrong | approximate | exact | skipped
    shape: tuple[int, ...] | None = None  # the expected shape
    got_shape: tuple[int, ...] | None = None
    maxdiff: float | None = None
    diagnosis: str = ""  # one line; empty when nothing needs saying
    kind: str = ""  # machine-readable cause: factor, sign, transposed, branch, inherited, keepdim, …

    @property
    def ok(self) -> bool:
        return self.status in PASSING

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        d["got_shape"] = None if self.got_shape is None else list(self.got_shape)
        d["maxdiff"] = json_float(d["maxdiff"])
        return d


@dataclass
class Report:
    """Rows of one check; `error` is a failure that stopped it (the learner's exception, a timeout)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing ran into an error and every filled-in row is at least approximate."""
        return self.error is None and all(r.ok for r in self.rows)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

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
        return {"title": self.title, "ok": self.ok, "error": self.error, "rows": [r.to_dict() for r in self.rows],
                "notes": list(self.notes), "summary": self.summary}

    def format_text(self) -> str:
        lines = [self.title]
        if self.rows:
            w = max(12, *(len(r.name) + 2 for r in self.rows))
            lines.append(f"{'name':<{w}}{'shape':<10}{'status':<13}{'maxdiff':>9}  diagnosis")
            for r in self.rows:
                md = "" if r.maxdiff is None else f"{r.maxdiff:.1e}"
                lines.append(f"{r.name:<{w}}{shape_text(r.shape):<10}{r.status:<13}{md:>9}  {r.diagnosis}".rstrip())
        lines += [f"note: {n}" for n in self.notes]
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


def combined_text(reports: list[Report]) -> str:
    return "\n\n".join(r.format_text() for r in reports)
