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
    from kdcore.export import (DEFAULT_CHECK_IMAGES, FORMATS, QUANTIZATIONS, TOLERANCE, ExportError, check_images,
                               export_checkpoint)
    from kdcore.store import Store

    if args.format not in FORMATS:  # argparse's choices would say it too, but not after a typo in a script's variable
        print(f"error: unknown format {args.format!r}; choose one of {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.phase not in (STUDENT, BASELINE) and not is_teacher(args.phase):  # it names a file in the run's folder
        print(f"error: unknown phase {args.phase!r}; choose student, teacher ({teacher_phase(2)}, …) or baseline",
              file=sys.stderr)
        return 2
    refusal = _quantize_refusal(args, QUANTIZATIONS)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
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
    if args.quantize:
        return _export_int8(args, store, run, weights)
    try:
        images = check_images(RunConfig.model_validate(run.config).dataset, DEFAULT_CHECK_IMAGES)
        result = export_checkpoint(weights, args.output, args.format, images)
    except (CheckpointError, ExportError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _checked_float(result, TOLERANCE)


def _quantize_refusal(args, quantizations) -> str | None:
    """What rules out the export's options before any work (None: nothing)."""
    if args.quantize is None:
        return None if args.output else "-o FILE is required (an int8 export without -o is kept in the run's folder)"
    if args.quantize not in quantizations:
        return f"unknown quantization {args.quantize!r}; choose {', '.join(quantizations)}"
    if args.format != "onnx":
        return f"--quantize {args.quantize} writes ONNX: use --format onnx, not {args.format}"
    if not args.max_drop >= 0:  # also refuses NaN
        return f"--max-drop must be 0 or more accuracy points, got {args.max_drop}"
    return None


def _checked_float(result, tolerance: float) -> int:
    """Prints a float export's check; 3 when it differs from PyTorch above the tolerance."""
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{result.path}  format {result.format}  max |logit difference| {result.max_abs_diff:.3g} "
          f"on {result.images_checked} test images  ({result.seconds:.1f} s)")
    if not result.within(tolerance):
        print(f"error: the exported {result.format} file differs from the PyTorch model by up to "
              f"{result.max_abs_diff:.3g} on the test images, above the float32 tolerance {tolerance:g}; "
              "do not use it", file=sys.stderr)
        return 3
    return 0


def _export_int8(args, store, run, weights) -> int:
    """The float32 ONNX, checked as any export; then int8, calibrated on training images and checked on the test
    images against it. Kept in the run's folder (and copied to -o) only when the drop is within --max-drop or forced."""
    import shutil
    import tempfile
    from pathlib import Path

    from kdcore.config import RunConfig
    from kdcore.engine.checkpoint import CheckpointError
    from kdcore.export import (DEFAULT_CHECK_IMAGES, TOLERANCE, ExportError, NoCalibrationData, check_int8,
                               export_checkpoint, int8_data, keep_int8, quantize_onnx, with_latency)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            calibration, test = int8_data(RunConfig.model_validate(run.config).dataset, args.calibration_images)
            fp32 = export_checkpoint(weights, Path(tmp) / "fp32.onnx", "onnx",
                                     test.images(range(min(DEFAULT_CHECK_IMAGES, len(test)))))
            if not fp32.within(TOLERANCE):
                print(f"error: the float32 ONNX differs from the PyTorch model by up to {fp32.max_abs_diff:.3g} on "
                      f"the test images, above the tolerance {TOLERANCE:g}; not quantized", file=sys.stderr)
                return 3
            warnings = quantize_onnx(fp32.path, Path(tmp) / "int8.onnx", calibration)
            result = check_int8(fp32.path, Path(tmp) / "int8.onnx", test, len(calibration), args.max_drop)
        except NoCalibrationData as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except (CheckpointError, ExportError, ValueError, OSError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        for warning in dict.fromkeys([*fp32.warnings, *warnings]):
            print(f"warning: {warning}", file=sys.stderr)
        bound = f"the bound --max-drop {args.max_drop:g}"
        if not result.within() and not args.force:
            print(f"error: int8 loses {result.drop_points:.2f} accuracy points against the float32 {args.phase} "
                  f"({100 * result.int8_accuracy:.2f}% vs {100 * result.fp32_accuracy:.2f}% on {result.test_images} "
                  f"test images), above {bound}; not kept (--force keeps it)", file=sys.stderr)
            return 2
        result = with_latency(result, fp32.path, tuple(test.images(0).shape[1:]))
        kept = keep_int8(result, RunFolder(store.run_dir(run.id)), args.phase, forced=not result.within())
        copy = args.output if args.output and Path(args.output).resolve() != kept.resolve() else None
        try:
            if copy:
                Path(copy).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(kept, copy)
        except OSError as err:
            print(f"error: the int8 file is kept as {kept}, but cannot be copied to {copy}: {err.strerror or err}",
                  file=sys.stderr)
            return 1
    _print_int8(result, fp32, run, args.phase, kept, copy, bound)
    return 0


def _print_int8(result, fp32, run, phase: str, kept, output, bound: str) -> None:
    s = run.summary or {}
    lat = result.latency
    print(f"{kept}  int8 ONNX (static, QDQ), calibrated on {result.calibration_images} training images"
          + (f"; copied to {output}" if output else ""))
    print(f"from the float32 ONNX: max |logit difference| {fp32.max_abs_diff:.3g} from PyTorch on "
          f"{fp32.images_checked} test images")
    print(f"{'model':<18}{'test acc.':>10}{'size':>12}{'batch 1':>12}{'batch 64':>12}")
    for name, acc, size, ms in ((f"{phase} fp32 ONNX", result.fp32_accuracy, result.fp32_bytes, lat["fp32"]),
                                (f"{phase} int8 ONNX", result.int8_accuracy, result.int8_bytes, lat["int8"])):
        print(f"{name:<18}{100 * acc:>9.2f}%{size / 2**20:>9.4f} MB{ms[1]:>9.3g} ms{ms[64]:>9.3g} ms")
    print(f"int8 drop: {result.drop_points:.2f} accuracy points on {result.test_images} test images "
          f"({'within' if result.within() else 'ABOVE, kept with --force:'} {bound}); latency by onnxruntime on "
          f"{result.latency_device}, {result.latency_threads} thread(s)")
    others = [f"{p} {100 * s[f'{p}_test_acc']:.2f}%" for p in ("teacher", "baseline", "student")
              if isinstance(s.get(f"{p}_test_acc"), (int, float))]
    if others:
        print("for comparison, the run's test accuracies (PyTorch): " + ", ".join(others))


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
    export.add_argument("-o", "--output", help="file to write (required, except with --quantize: then a copy of "
                                               "the file kept in the run's folder)")
    export.add_argument("--phase", default="student",
                        help=f"student (default), teacher, {teacher_phase(2)}, … or baseline")
    export.add_argument("--quantize", metavar="int8", help="int8: static quantization by onnxruntime (QDQ), "
                                                           "calibrated on training images, checked on the test images")
    export.add_argument("--calibration-images", type=int, default=300, metavar="N",
                        help="training images to calibrate int8 on (default 300)")
    export.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                        help="refuse an int8 file that loses more test accuracy than this against float32 "
                             "(default 1.0 point)")
    export.add_argument("--force", action="store_true", help="keep an int8 file above --max-drop anyway")
    export.set_defaults(func=cmd_export)
