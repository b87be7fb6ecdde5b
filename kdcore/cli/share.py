"""`kdcore report` and `kdcore export`: a run or a group as one HTML file, a run's weights as a model file."""
from __future__ import annotations

import contextlib
import os
import sys

from kdcore.cli.common import _stored_run
from kdcore.record import BASELINE, STUDENT, RunFolder, is_teacher, teacher_phase


class _ReportFile:
    """Where a report goes, checked before seconds go into building it.

    A file is written beside it and renamed over it at the end, so a failed build or a full disk leaves an older
    report whole. A device or pipe (/dev/stdout) is written in place: its first bytes go at once, so one that
    takes none (/dev/full) is refused before the build too.
    """
    HEAD = "<!DOCTYPE html>"  # how every report starts

    def __init__(self, path):
        self.path, self.stream, self.temp = path, None, None
        if path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        if path.exists() and not path.is_file():
            self.stream = open(path, "w", encoding="utf-8")
            self.stream.write(self.HEAD)
            self.stream.flush()
            return
        folder = next(p for p in path.absolute().parents if p.exists())
        if not folder.is_dir():  # mkdir would say only "File exists"
            raise NotADirectoryError(20, f"{folder} is a file, not a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # may it be replaced? (read-only, immutable)
        self.temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.stream = os.fdopen(os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w",
                                encoding="utf-8")

    def write(self, html: str) -> None:
        if self.temp is None and html.startswith(self.HEAD):
            html = html[len(self.HEAD):]
        self.stream.write(html)
        self.stream.close()
        if self.temp is not None:
            os.replace(self.temp, self.path)
            self.temp = None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.stream.close()
        if self.temp is not None:
            self.temp.unlink(missing_ok=True)


def cmd_report(args) -> int:
    from pathlib import Path

    from kdcore.report import ReportError, RunIdOutOfRange, build_report
    from kdcore.store import Store

    store = Store(args.db)
    out = Path(args.output)
    try:
        target = _ReportFile(out)
    except OSError as err:
        print(f"error: cannot write the report to {out}: {err.strerror}; choose another -o", file=sys.stderr)
        return 2
    try:
        try:
            html = build_report(store, args.target, latency=not args.no_latency)
        except ReportError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2 if isinstance(err, RunIdOutOfRange) else 1
        try:
            target.write(html)
        except OSError as err:  # the disk filled while writing
            print(f"error: cannot write the report to {out}: {err.strerror}; choose another -o", file=sys.stderr)
            return 2
    finally:
        target.discard()
    print(f"wrote {out} ({len(html.encode()) / 2**20:.1f} MB): open it in any browser, no network needed",
          file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from kdcore.config import RunConfig
    from kdcore.engine.checkpoint import CheckpointError
    from kdcore.export import DEFAULT_CHECK_IMAGES, FORMATS, TOLERANCE, ExportError, check_images, export_checkpoint
    from kdcore.store import Store

    if args.format not in FORMATS:  # argparse's choices would say it too, but not after a typo in a script's variable
        print(f"error: unknown format {args.format!r}; choose one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.phase not in (STUDENT, BASELINE) and not is_teacher(args.phase):  # it names a file in the run's folder
        print(f"error: unknown phase {args.phase!r}; choose student, teacher ({teacher_phase(2)}, …) or baseline",
              file=sys.stderr)
        return 2
    store = Store(args.db)
    run = _stored_run(store, args.id)
    if run is None:
        return 1
    weights = RunFolder(store.run_dir(run.id)).weights(args.phase)
    if not weights.is_file():
        print(f"error: run {run.id} has no {args.phase} weights ({weights} does not exist); "
              "a run stores each phase's weights once that phase has trained", file=sys.stderr)
        return 1
    try:
        images = check_images(RunConfig.model_validate(run.config).dataset, DEFAULT_CHECK_IMAGES)
        result = export_checkpoint(weights, args.output, args.format, images)
    except (CheckpointError, ExportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.path}  format {result.format}  max |logit difference| {result.max_abs_diff:.3g} "
          f"on {result.images_checked} test images  ({result.seconds:.1f} s)")
    if not result.within(TOLERANCE):
        print(f"error: the exported {result.format} file differs from the PyTorch model by up to "
              f"{result.max_abs_diff:.3g} on the test images, above the float32 tolerance {TOLERANCE:g}; "
              "do not use it", file=sys.stderr)
        return 3
    return 0


def add_parsers(sub) -> None:
    report = sub.add_parser("report", help="one self-contained HTML report of a run or a group, to share")
    report.add_argument("target", metavar="ID|GROUP", help="a run id, or the name of a seed group or sweep")
    report.add_argument("-o", "--output", required=True, metavar="FILE.html", help="where to write the report")
    report.add_argument("--no-latency", action="store_true",
                        help="do not measure latency now when the run stored none")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="export a run's weights as ONNX, a torch.export program or the "
                                           "checkpoint, checked against PyTorch on the run's test images")
    export.add_argument("id", type=int, help="run id")
    export.add_argument("--format", required=True, help="onnx, pt2 or weights")
    export.add_argument("-o", "--output", required=True, help="file to write")
    export.add_argument("--phase", default="student",
                        help=f"student (default), teacher, {teacher_phase(2)}, … or baseline")
    export.set_defaults(func=cmd_export)
