"""The teachers' logits for every training image, computed once over the first epoch's batches.

Without augmentation a logit method's teacher outputs never change, so they are computed
once and read from memory after that. They are computed over the batches of the first epoch
(the loader's epoch 0: its order and batch size), which fixes each image's batch, so a
resumed fit recomputes exactly the same values. On a CPU with two or more threads a second
Python thread runs the teachers ahead of the student, each with half the threads: the
student's small kernels barely use a second core, and the teachers' pass then costs little
more than the student's first epoch. A large teacher, though, scales well over the threads and
keeps the student waiting: where the student waits, the pass times a few batches each way,
beside the student and in turn with all threads, and keeps the faster.

For the teachers' pass each teacher is a copy with its batch norms folded into the
convolutions before them (inference only; the same logits to float rounding).
"""
from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from kdcore.data import BatchLoader
from kdcore.engine.device import FastPath
from kdcore.engine.exported import ExportedTeacher
from kdcore.spans import region


def folded_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with each Conv2d -> BatchNorm2d pair folded into one conv.

    Models that torch.fx cannot trace are copied as they are; a teacher from an exported file is used as it is
    (tracing would hand onnxruntime a proxy, and its graph is frozen already).
    """
    from torch.fx.experimental.optimization import fuse

    if isinstance(model, ExportedTeacher):
        return model
    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception:  # untraceable control flow: the plain copy computes the same logits
        return copy.deepcopy(model).eval()


PROBE_BATCHES = 4  # student steps timed each way, after one settling step
PROBE_WAITED_SHARE = 0.2  # the student waited this share of its timed steps on the teachers: try them in turn


@dataclass
class _WayProbe:
    """The timing of the two ways to run the teachers' pass, over the student's first steps."""

    stage: str = "beside"
    start_batch: int = 2  # the first timed step: the one before it settles the threads
    started: float = 0.0
    waited_before: float = 0.0
    beside_s: float = 0.0  # seconds a batch


class TeacherLogitCache:
    """(N, K) combined teacher logits for a training loader's split, filled over its epoch 0.

    Args:
        teachers: the teacher models (eval mode).
        combine: several teachers' logits for one batch -> one (a distiller's `combine`).
        loader: the training loader (in memory, unaugmented).
        path: the fit's FastPath (bf16 autocast, channels_last).
        background: run the teachers in a second thread, one batch ahead of the student.
    """

    def __init__(self, teachers: Sequence[nn.Module], combine: Callable[[list[Tensor]], Tensor],
                 loader: BatchLoader, path: FastPath, background: bool):
        self._teachers = [path.format_model(folded_for_inference(t)) for t in teachers]
        self._combine = combine
        self._path = path
        self._batches = iter(loader.epoch_view(0))
        self.batches = len(loader)
        self.logits: Optional[Tensor] = None  # allocated at the first batch, when K is known
        self._rows = loader.num_samples
        self._done = 0  # batches filled so far
        self.busy_s = 0.0  # time spent filling, in whichever thread
        self.background = background
        self._error: Optional[BaseException] = None
        self._filled = threading.Condition()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._threads_before = torch.get_num_threads()
        self._waited_s = 0.0  # the student's time spent waiting on the second thread
        self._asked = 0  # the batches the student has asked for so far
        self._probe = _WayProbe() if background and self.batches >= 2 + 4 * PROBE_BATCHES else None
        self.measured = ""  # what timing the two ways found, once it ran
        if background:
            self._start_thread()

    def _start_thread(self) -> None:
        # the student's thread and this one each get half of the threads while both run
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(max(1, self._threads_before // 2))
        self._stop.clear()
        self._thread = threading.Thread(target=self._fill_all, name="kdcore-teacher-pass", daemon=True)
        self._thread.start()

    @staticmethod
    def overlaps(path: FastPath) -> bool:
        """Whether the teachers' pass can run beside the student: a CPU with at least two threads."""
        return path.device.type == "cpu" and torch.get_num_threads() >= 2

    @property
    def beside(self) -> bool:
        """Whether the second thread is still running beside the student."""
        return self._thread is not None

    def _fill_next(self) -> None:
        start = time.perf_counter()
        x, _, idx = next(self._batches)
        with torch.inference_mode(), self._path.autocast(), region("kdcore.teacher_cache"):
            logits = self._combine([t(x).float() for t in self._teachers])
        self.busy_s += time.perf_counter() - start
        with self._filled:
            if self.logits is None:
                self.logits = torch.empty(self._rows, logits.shape[1], dtype=torch.float32, device=logits.device)
            self.logits[idx] = logits
            self._done += 1
            self._filled.notify_all()

    def _fill_all(self) -> None:
        try:
            while self._done < self.batches and not self._stop.is_set():
                self._fill_next()
        except BaseException as err:  # handed to the student's thread, which raises it
            with self._filled:
                self._error = err
                self._filled.notify_all()

    def wait_for(self, batches: int) -> Tensor:
        """The logits tensor once the first `batches` batches of epoch 0 are in it (filling them here without a thread)."""
        batches = min(batches, self.batches)
        if self._probe is not None:
            self._time_the_ways(batches)
        if self._thread is None:
            while self._done < batches:
                self._fill_next()
            return self.logits
        start = time.perf_counter()
        with self._filled, region("kdcore.teacher_wait"):
            self._filled.wait_for(lambda: self._done >= batches or self._error is not None)
        self._waited_s += time.perf_counter() - start
        if self._error is not None:
            raise self._error
        if self._done >= self.batches:
            self.close()
        return self.logits

    def _time_the_ways(self, batches: int) -> None:
        """Called as the student asks for each batch: times its steps beside the teachers' thread, and where it
        waited on them, times steps with the teachers run in turn with all threads, then keeps the faster way."""
        probe, now = self._probe, time.perf_counter()
        if batches != self._asked + 1:  # a resumed fit asks for every batch at once: nothing to time
            self._probe = None
            return
        self._asked = batches
        if batches == probe.start_batch:
            probe.started, probe.waited_before = now, self._waited_s
        elif batches == probe.start_batch + PROBE_BATCHES:
            per_batch = (now - probe.started) / PROBE_BATCHES
            if probe.stage == "beside":
                waited = (self._waited_s - probe.waited_before) / (now - probe.started)
                if waited < PROBE_WAITED_SHARE or self._thread is None:  # the teachers keep up, or are done
                    self._probe = None
                    return
                probe.stage, probe.beside_s = "in turn", per_batch
                self.close()
                probe.start_batch = max(batches, self._done) + 1  # this step settles the threads
                return
            faster_beside = probe.beside_s < per_batch
            split = torch.get_num_threads() >= 2  # the thread policy may have lowered them meanwhile
            self.measured = (f"{'beside the student' if faster_beside and split else 'in turn'}: "
                             f"{probe.beside_s * 1000:.0f} ms a batch beside, {per_batch * 1000:.0f} ms in turn"
                             f"{'' if split or not faster_beside else ', one thread left to split'}")
            self._probe = None
            if faster_beside and split and self._done < self.batches:
                self._start_thread()

    def complete(self) -> Tensor:
        """The logits of the whole split."""
        return self.wait_for(self.batches)

    def close(self) -> None:
        """Stops the second thread (a cancelled fit) and gives the student's thread all threads again."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            torch.set_num_threads(self._threads_before)
