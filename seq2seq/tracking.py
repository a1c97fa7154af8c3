"""Experiment tracking behind a small interface: Weights & Biases, a JSON-lines file, or nothing.

Model and training code talk to a :class:`Tracker`; only :class:`WandbTracker` imports wandb.
W&B runs are offline unless ``WANDB_MODE`` or ``tracking.mode`` says otherwise.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from seq2seq.config import TrackingConfig
from seq2seq.files import atomic_write, write_error
from seq2seq.train.distributed import current


class Tracker:
    """The no-op tracker; subclasses record what they are given."""

    keeps_images = False  # whether images() keeps anything: validation then skips drawing figures

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        pass

    def images(self, name: str, images: list[tuple[Image.Image, str]], step: int) -> None:
        pass

    def lines(self, name: str, series: dict[str, list[float]], xname: str, step: int) -> None:
        """One line plot: each series' values at x = 0, 1, 2, ..."""

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self) -> None:
        pass


class JsonlTracker(Tracker):
    """Scalars and summaries appended to a JSON-lines file in the run folder."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._checked = False  # whether the log's last line was looked at (a crash may have cut it)

    def _write(self, record: dict[str, Any]) -> None:
        try:
            cut = not self._checked and _ends_mid_line(self.path)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(("\n" if cut else "") + json.dumps(record, ensure_ascii=False) + "\n")
            self._checked = True
        except OSError as err:  # a full disk or a read-only folder: one line, not a traceback
            raise write_error(self.path, err) from None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._write({"step": step, "time": round(time.time(), 3), **metrics})

    def lines(self, name: str, series: dict[str, list[float]], xname: str, step: int) -> None:
        self._write({"step": step, "time": round(time.time(), 3), name: series})

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"summary": values})


def _ends_mid_line(path: Path) -> bool:
    """Whether a log's last line lacks its newline (a crash cut it short)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def logged_rows(path: Path, key: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines log (``metrics.jsonl``) that hold ``key``, in step order; none
    when the file is absent. A line a crash cut short is left out. A session that logs a step
    again (resumed from a checkpoint before it, or started anew after a failure) replaces what
    earlier sessions logged from that step on: the rows describe the run its weights come from."""
    if not path.is_file():
        return []
    rows: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not (isinstance(row, dict) and key in row):
            continue
        step = row.get("step")
        if isinstance(step, int):
            while rows and isinstance(rows[-1].get("step"), int) and rows[-1]["step"] >= step:
                rows.pop()  # an earlier session's line from this step on
        rows.append(row)
    return rows


class WandbTracker(Tracker):
    keeps_images = True

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: dict[str, Any], job_type: str):
        import wandb

        self.wandb = wandb
        id_file = run_dir / "wandb_id.txt"  # a resumed run continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write(id_file, run_id + "\n")
        kwargs: dict[str, Any] = {}
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode  # an explicit mode beats WANDB_MODE
        elif "WANDB_MODE" not in os.environ:
            kwargs["mode"] = "offline"
        self.run = wandb.init(project=cfg.project, name=cfg.name or run_dir.name, group=cfg.group, dir=str(run_dir),
                              config=config, job_type=job_type, id=run_id, resume="allow", **kwargs)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def images(self, name: str, images: list[tuple[Image.Image, str]], step: int) -> None:
        padded = same_size([img for img, _ in images])  # W&B wants one size per logged list
        self.run.log({name: [self.wandb.Image(img, caption=cap) for img, (_, cap) in zip(padded, images)]}, step=step)

    def lines(self, name: str, series: dict[str, list[float]], xname: str, step: int) -> None:
        xs = [list(range(len(values))) for values in series.values()]
        chart = self.wandb.plot.line_series(xs, list(series.values()), list(series), title=f"{name} at step {step}",
                                            xname=xname)
        self.run.log({name: chart}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        self.run.finish()


class Trackers(Tracker):
    """Several trackers at once."""

    def __init__(self, *trackers: Tracker):
        self.trackers = trackers
        self.keeps_images = any(t.keeps_images for t in trackers)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        for t in self.trackers:
            t.table(name, columns, rows, step)

    def images(self, name: str, images: list[tuple[Image.Image, str]], step: int) -> None:
        for t in self.trackers:
            t.images(name, images, step)

    def lines(self, name: str, series: dict[str, list[float]], xname: str, step: int) -> None:
        for t in self.trackers:
            t.lines(name, series, xname, step)

    def summary(self, values: dict[str, Any]) -> None:
        for t in self.trackers:
            t.summary(values)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def same_size(images: list[Image.Image]) -> list[Image.Image]:
    """The images on white canvases of the largest width and height among them, top-left aligned."""
    if len({img.size for img in images}) <= 1:
        return images
    width, height = max(img.width for img in images), max(img.height for img in images)
    out = []
    for img in images:
        canvas = Image.new("RGB", (width, height), "white")
        canvas.paste(img.convert("RGB"), (0, 0))
        out.append(canvas)
    return out


def wandb_mode(cfg: TrackingConfig) -> str:
    """The mode W&B will run in: the config's, else WANDB_MODE, else offline."""
    return cfg.mode or os.environ.get("WANDB_MODE") or "offline"


def make_tracker(cfg: TrackingConfig, run_dir: Path, config: dict[str, Any], job_type: str = "train") -> Tracker:
    """A JSON-lines log in the run folder, plus W&B unless tracking is disabled; nothing on the
    ranks of a data-parallel run other than rank 0."""
    if not current().main:
        return Tracker()
    local = JsonlTracker(run_dir / "metrics.jsonl")
    if not cfg.enabled or wandb_mode(cfg) == "disabled":
        return local
    return Trackers(local, WandbTracker(cfg, run_dir, config, job_type))
