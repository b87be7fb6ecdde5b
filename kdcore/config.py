"""Typed run configuration, the schema alone: built by kdcore.configure from YAML, overrides and the dashboard's
widgets.

Stored with each run as JSON. Unknown keys and out-of-range values are rejected
with a message naming the key, before anything is written.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Names are checked against the registries (datasets, models, methods), which import this schema, so the checks
# live one floor up: kdcore.configure installs them here when it is imported, as every builder of configs does.
NAME_CHECKS: dict[str, Callable[[Any], Any]] = {}


def _checked(kind: str, value: Any) -> Any:
    check = NAME_CHECKS.get(kind)
    return value if check is None else check(value)


class _Strict(BaseModel):
    # no NaN or inf: a range check alone says "should be <= 10" of a NaN, and a list of weights takes it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


SEED_MAX = 2**32 - 1  # numpy's seeds are 0..2**32-1; torch takes more, so this rule suits both


def check_seed(seed: int) -> int:
    """A seed as train.seed, teacher.seed and --seeds take it, or ValueError naming the range."""
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{seed} is out of range: a seed is a whole number from 0 to {SEED_MAX}")
    return seed


class AugmentConfig(_Strict):
    crop_padding: int = Field(0, ge=0, le=16)  # pixels of zero padding before a random crop; 0 = off
    flip: bool = False  # random horizontal flip
    rotation: float = Field(0.0, ge=0.0, le=45.0)  # maximum rotation, degrees; 0 = off

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.rotation > 0


class DatasetConfig(_Strict):
    name: str = "digits"  # a registered dataset: digits, mnist, fashion_mnist, cifar10, cifar100, imagefolder
    root: Optional[str] = None  # data folder; default $KDCORE_DATA_ROOT, else ./data
    download: bool = False  # allow torchvision to download a missing dataset
    val_fraction: float = Field(0.1, ge=0.0, lt=0.9)  # share of train carved out for validation (fixed seed)
    image_size: Optional[int] = Field(None, ge=8, le=512)  # imagefolder only: side in pixels after resizing
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    student_fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of the training images the student and its baseline learn from (stratified, fixed); the teacher sees all

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return _checked("dataset", name)


def _check_arch(arch: str) -> str:
    return _checked("model", arch)


def _check_pretrained(pretrained: Union[bool, str, None], arch: str) -> None:
    if pretrained in (None, False):
        return
    if not arch.startswith("timm/"):
        raise ValueError(f"pretrained weights are for timm/<name> models only, not {arch!r}; start a zoo model "
                         "from a file with checkpoint")
    if isinstance(pretrained, str) and not pretrained.strip():
        raise ValueError("pretrained is true (timm's own download) or the path of a state dict file, not empty")


EXPORTED_PREFIX = "exported:"  # an exported teacher's arch, as runs show it: exported:<file name>
EXPORTED_SUFFIXES = (".pt2", ".onnx")


def _exported_arch(data: Any) -> Any:
    """source=exported: the teacher is named by its file, since it has no kdcore arch; an arch and options given
    too (a YAML's teacher switched to a file with --set) are the file's to say, and replaced."""
    if not isinstance(data, dict) or data.get("source") != "exported" or not isinstance(data.get("checkpoint"), str):
        return data
    return {**data, "arch": EXPORTED_PREFIX + PurePath(data["checkpoint"]).name, "options": {}}


def _exported_problem(t: "TeacherConfig") -> Optional[str]:
    """What an exported teacher's settings get wrong: it is a frozen file, trained and built elsewhere."""
    if t.source != "exported":
        return (f"teacher.arch {t.arch!r} names a teacher from an exported file; set teacher.source to exported"
                if t.arch.startswith(EXPORTED_PREFIX) else None)
    if not t.checkpoint:
        return "teacher.checkpoint is required when teacher.source is 'exported': the path of a .pt2 or .onnx file"
    if PurePath(t.checkpoint).suffix.lower() not in EXPORTED_SUFFIXES:
        return (f"teacher.checkpoint {PurePath(t.checkpoint).name!r} is not a .pt2 or .onnx file; an exported "
                "teacher is a torch.export program (.pt2) or an ONNX model (.onnx)")
    if t.finetune_epochs > 0 or t.finetune_last_stage_only:
        return ("an exported teacher is frozen: it is never fine-tuned (teacher.finetune_epochs must be 0); "
                "a teacher to fine-tune is given by its weights file (teacher.source checkpoint)")
    return None


TEACHER_TRAIN_KEYS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma",
                      "early_stopping_patience")  # train.* settings a teacher may set for itself


class TeacherConfig(_Strict):
    arch: str = "small_cnn"  # a registered model name
    source: Literal["train", "run", "checkpoint", "exported"] = "train"  # where the teacher's weights come from
    run_id: Optional[int] = None  # source=run: the stored run whose teacher is reused
    checkpoint: Optional[str] = None  # source=checkpoint: a state_dict file saved with torch.save; source=exported: a .pt2 or .onnx file (arch is then exported:<file name>, options none)
    epochs: int = Field(5, ge=1, le=10_000)  # source=train: teacher training epochs
    seed: Optional[int] = None  # seed of this teacher's training or fine-tuning; default train.seed (each teacher of `teachers` alike). A seed group sets it so all its runs share one teacher
    options: dict[str, Any] = Field(default_factory=dict)  # extra model arguments, e.g. {hidden: [1200, 1200]}
    finetune_epochs: int = Field(0, ge=0, le=10_000)  # source=run or checkpoint: epochs of fine-tuning on this dataset before distilling (transfer); a new head when the class count differs
    finetune_last_stage_only: bool = False  # fine-tuning trains only the last stage and the head
    augment: Optional[AugmentConfig] = None  # this teacher's own augmentation; default dataset.augment (every phase alike)
    train: dict[str, Any] = Field(default_factory=dict)  # this teacher's own train.* settings (lr, optimizer, batch_size, ...); the rest as train
    pretrained: Union[bool, str, None] = None  # timm/<name> only: true downloads timm's weights (online machines), a path loads that state dict file before training

    _arch = field_validator("arch")(classmethod(lambda cls, v: v if v.startswith(EXPORTED_PREFIX) else _check_arch(v)))
    _seed = field_validator("seed")(classmethod(lambda cls, v: v if v is None else check_seed(v)))
    _exported = model_validator(mode="before")(classmethod(lambda cls, data: _exported_arch(data)))

    @field_validator("train")
    @classmethod
    def _own_training(cls, settings: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(settings) - set(TEACHER_TRAIN_KEYS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not a setting a teacher trains with on its own; "
                             f"choose from {', '.join(TEACHER_TRAIN_KEYS)} (epochs and seed are teacher.epochs and "
                             "teacher.seed)")
        try:
            checked = TrainConfig.model_validate(settings)
        except ValidationError as err:
            raise ValueError(_format_errors(err)) from None
        return {key: getattr(checked, key) for key in settings}

    @model_validator(mode="after")
    def _source_has_its_reference(self) -> "TeacherConfig":
        if self.source == "run" and self.run_id is None:
            raise ValueError("teacher.run_id is required when teacher.source is 'run'")
        if self.source == "checkpoint" and not self.checkpoint:
            raise ValueError("teacher.checkpoint is required when teacher.source is 'checkpoint'")
        problem = _exported_problem(self)
        if problem:
            raise ValueError(problem)
        if self.pretrained not in (None, False) and self.source != "train":
            raise ValueError("teacher.pretrained starts a teacher trained here (teacher.source train); "
                             f"a teacher from a {self.source} has its weights already")
        _check_pretrained(self.pretrained, self.arch)
        return self


class StudentConfig(_Strict):
    arch: str = "small_cnn"  # a registered model name
    options: dict[str, Any] = Field(default_factory=dict)  # extra model arguments
    freeze_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # share of early parameter tensors kept frozen
    checkpoint: Optional[str] = None  # start the student (and its baseline) from these weights; a new head when the class count differs
    pretrained: Union[bool, str, None] = None  # timm/<name> only: true downloads timm's weights, a path loads that state dict file

    _arch = field_validator("arch")(classmethod(lambda cls, v: _check_arch(v)))

    @model_validator(mode="after")
    def _pretrained_fits(self) -> "StudentConfig":
        if self.pretrained not in (None, False) and self.checkpoint:
            raise ValueError("student.pretrained and student.checkpoint both start the student: give one")
        _check_pretrained(self.pretrained, self.arch)
        return self


class DistillConfig(_Strict):
    method: str = "soft"  # a registered method; `kdcore methods` lists them with their options
    temperature: float = Field(4.0, gt=0.0, le=100.0)  # softmax temperature T
    alpha: float = Field(0.9, ge=0.0, le=1.0)  # weight of the method's terms; 1 - alpha on true labels
    options: dict[str, Any] = Field(default_factory=dict)  # the method's own options, e.g. {beta: 8.0} for dkd
    teacher_weights: Optional[list[float]] = None  # several teachers: fixed weights of their softened probabilities; default equal

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _checked("method", method)

    @field_validator("teacher_weights")
    @classmethod
    def _weights_positive(cls, weights: Optional[list[float]]) -> Optional[list[float]]:
        if weights is not None and (any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError("teacher weights must be >= 0 with a positive sum")
        return weights

    @model_validator(mode="before")
    @classmethod
    def _method_options(cls, data: Any) -> Any:
        """Checks options against the method's declaration and stores them with its defaults filled in."""
        return _checked("method_options", data)


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1, le=10_000)  # student epochs (the baseline gets the same)
    batch_size: int = Field(128, ge=1, le=65_536)  # images per step
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)  # peak learning rate
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # SGD only
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    schedule: Literal["cosine", "step", "none"] = "cosine"
    milestones: list[int] = Field(default_factory=list)  # step schedule: epochs where lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step schedule factor
    early_stopping_patience: int = Field(0, ge=0)  # epochs without validation gain before stopping; 0 = off
    seed: int = 0  # makes a CPU run repeatable
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # the fast path (kdcore.engine.device.FastPath; speed-ups measured in docs/benchmarks.md)
    amp: bool = True  # bf16 autocast where the device computes bf16 natively: CUDA, CPUs with AVX-512 BF16 or AMX
    channels_last: bool = True  # conv models and batches in NHWC, on CPU and CUDA
    fused_optimizer: bool = True  # the optimizer step as one fused kernel, on CPU and CUDA
    # the student's forward and backward under torch.compile, full batches only (the last, smaller one runs
    # eagerly); off by default: compiling takes longer than it saves in a short CPU run. The summary's
    # fast_path.compile and <phase>_compile say what ran, or why not
    compile: bool = False
    cuda_graphs: bool = False  # CUDA only: the compiled step replayed as CUDA graphs (mode "reduce-overhead")
    eval_batch_size: int = Field(256, ge=1)  # images per step when evaluating; larger batches were slower on CPU
    nproc: int = Field(1, ge=1, le=64)  # processes (GPUs) training the run together under torchrun (DDP)

    _seed = field_validator("seed")(classmethod(lambda cls, v: check_seed(v)))

    @model_validator(mode="after")
    def _batch_splits(self) -> "TrainConfig":
        if self.batch_size % self.nproc:  # every rank takes an equal shard of each global batch
            raise ValueError(f"train.batch_size {self.batch_size} does not divide over train.nproc {self.nproc} "
                             "processes; give a multiple of it")
        return self


class RunConfig(_Strict):
    name: str = ""  # free text; defaults to a generated one
    tags: list[str] = Field(default_factory=list)
    group: Optional[str] = None  # sweep group this run belongs to
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    teachers: list[TeacherConfig] = Field(default_factory=list)  # several teachers, each as `teacher` takes; `teacher` is then the first
    student: StudentConfig = Field(default_factory=StudentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    baseline: bool = True  # also train the student from scratch, to report the KD gain

    @model_validator(mode="after")
    def _one_way_to_name_teachers(self) -> "RunConfig":
        if self.teachers:
            if "teacher" in self.model_fields_set and self.teacher != self.teachers[0]:
                raise ValueError("give either teacher or teachers, not both")
            object.__setattr__(self, "teacher", self.teachers[0])  # plain assignment would validate again
        weights = self.distill.teacher_weights
        if weights is not None and len(weights) != len(self.all_teachers):
            raise ValueError(f"distill.teacher_weights has {len(weights)} entries for {len(self.all_teachers)} teacher(s)")
        return self

    @property
    def all_teachers(self) -> list[TeacherConfig]:
        return list(self.teachers) or [self.teacher]

    def display_name(self) -> str:
        if self.name:
            return self.name
        d = self.distill
        return f"{self.dataset.name}: {self.teacher.arch} → {self.student.arch} T={d.temperature:g} α={d.alpha:g}"

    @property
    def teacher_seed(self) -> int:
        return self.train.seed if self.teacher.seed is None else self.teacher.seed

    def teacher_train(self, index: int = 0) -> "TrainConfig":
        """The training settings of the index-th teacher: train, with what the teacher sets for itself."""
        own = self.all_teachers[index].train
        return self.train.model_copy(update=own) if own else self.train

    def teacher_augment(self, index: int = 0) -> AugmentConfig:
        """The augmentation the index-th teacher trains with: its own, else dataset.augment."""
        own = self.all_teachers[index].augment
        return self.dataset.augment if own is None else own


class ConfigError(ValueError):
    """A config that cannot be used; the message names each offending key."""


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        key = ".".join([prefix] * bool(prefix) + [str(p) for p in e["loc"]]) or "(config)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        msg = msg.removeprefix("Value error, ")
        if e["type"] == "finite_number":
            msg = f"{e['input']} is not a {'number' if str(e['input']).lower() == 'nan' else 'finite number'}"
        if msg.startswith("options.") and key.endswith("distill"):  # a method's options' own errors, already keyed
            lines.extend(f"{key}.{part}" for part in msg.split("; "))
            continue
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)
