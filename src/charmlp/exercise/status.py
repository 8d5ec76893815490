"""`charmlp exercise status [DIR]`: the progress ledger of every exercise file in a directory.

A file is an exercise when its first lines carry the mark `init` writes (`exercises.MARK`). Each is
re-checked exactly as `check` does (its own confined process, the same time limit), so the ledger never
disagrees with `check`: per part the steps exact / approximate / wrong / missing, the next step to do
(the first one, in the exercise's order, not yet right), and the hints and reveals used (`hints.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CharmlpError
from .exercises import model_of
from .hints import used

COUNTED = ("exact", "approximate", "wrong", "missing")


@dataclass
class FileStatus:
    file: str
    model: str
    parts: list[dict] = field(default_factory=list)  # {"title", "exact", "approximate", "wrong", "missing"}
    next: str | None = None
    hints: int = 0
    reveals: int = 0
    error: str | None = None

    @property
    def summary(self) -> str:
        aids = f"; {self.hints} hint{'s' * (self.hints != 1)}, {self.reveals} reveal{'s' * (self.reveals != 1)}"
        if self.error:
            return f"{self.file} ({self.model}): error: {self.error}{aids}"
        done = sum(p["exact"] + p["approximate"] for p in self.parts)
        total = sum(sum(p[k] for k in COUNTED) for p in self.parts)
        nxt = f", next: {self.next}" if self.next else ", all done"
        return f"{self.file} ({self.model}): {done} of {total} right{nxt}{aids}"

    def to_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary}


def exercise_files(directory: str | Path) -> list[Path]:
    """The marked exercise files directly in `directory`, by name."""
    d = Path(directory)
    if not d.is_dir():
        raise CharmlpError(f"{d}: no such directory")
    return sorted(p for p in d.glob("*.py") if p.is_file() and model_of(p))


def file_status(path: Path, timeout: float = 60.0) -> FileStatus:
    from .runner import check_file

    st = FileStatus(path.name, model_of(path) or "mlp")
    st.hints, st.reveals = used(path)
    try:
        reports = check_file(path, timeout=timeout)
    except CharmlpError as e:
        st.error = str(e)
        return st
    for rep in reports:
        if rep.error and not rep.rows:  # the file as a whole failed (a syntax error, a timeout): one line
            st.error = st.error or rep.error
            continue
        counts = dict.fromkeys(COUNTED, 0)
        for r in rep.rows:
            if r.name == "return value":
                continue
            counts["wrong" if r.status == "wrong shape" else r.status] += 1
            if st.next is None and r.status not in ("exact", "approximate"):
                st.next = r.name
        st.parts.append({"title": rep.title.split(" · ")[0], **counts})
        if rep.error and st.error is None:
            st.error = rep.error
    return st


def status(directory: str | Path = ".", timeout: float = 60.0) -> list[FileStatus]:
    """Every exercise file of `directory`, re-checked."""
    return [file_status(p, timeout) for p in exercise_files(directory)]


def format_text(statuses: list[FileStatus], directory: str | Path) -> str:
    if not statuses:
        return f"no exercise files in {directory} (write one with `charmlp exercise init`)"
    lines = []
    for st in statuses:
        lines.append(st.summary)
        for p in st.parts:
            lines.append(f"    {p['title']}: " + ", ".join(f"{p[k]} {k}" for k in COUNTED))
    return "\n".join(lines)
