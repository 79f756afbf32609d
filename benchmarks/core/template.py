"""The Avalanche layer every harness strategy stands on: store-backed, multi-input, checkpointable.

`HarnessTemplate` (an avalanche `SupervisedTemplate`) holds what every strategy shares; each suite
kind adds its own template on top (`benchmarks.suites.single_label.StoreTemplate`,
`benchmarks.suites.multilabel.MultiLabelTemplate`), and a method subclasses one of those. The
Avalanche training loop, plugin callbacks and experience handling stay in charge, while this
layer makes once the things avalanche-lib 0.6.0 gets wrong for this harness
(../shared/reference/cil_toolboxes.md 2.3-2.6):

- multi-input samples: a minibatch is `[rows, targets, task]` of index tensors; the views a
  method needs are gathered from device-resident copies of the step's rows in one index
  operation per view (`ResidentViews`), so avalanche never calls `.to` on a tuple and the
  training loop runs no per-sample Python (`IndexBatches`);
- per-step seeding (`step_seed`), so a run resumed at step t draws what an uninterrupted one draws;
- no avalanche loggers or metrics: the harness owns its metrics (benchmarks.metrics), and the
  "No loggers specified" warning is silenced where the evaluator is built;
- checkpointing: `resume_state`/`load_resume_state` are plain tensors and numbers, saved
  with torch.save and read back with `weights_only=True` (avalanche's own
  `save_checkpoint` pickles the whole strategy and fails under current dill).
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from tqdm.auto import tqdm

from datasets.store import FeatureStore


class ResidentViews:
    """Copies of some store rows' views on the training device, addressable by store row.

    The copies keep the store's dtype (fp16 rows stay fp16 on the device, half the memory);
    `gather` converts each minibatch to fp32, so autocast (bf16) sees the same inputs as fp32.
    `covers` answers from a host copy of the lookup, so asking costs no device synchronisation.
    """

    def __init__(self, store: FeatureStore, views: list[str], rows: torch.Tensor, device):
        self.rows = torch.unique(rows.cpu())
        self.host_lookup = torch.full((len(store),), -1, dtype=torch.long)
        self.host_lookup[self.rows] = torch.arange(len(self.rows))
        self.lookup = self.host_lookup.to(device)
        self.data = {v: store.gather(v, self.rows.numpy(), device=device) for v in views}

    def covers(self, rows: torch.Tensor, views=()) -> bool:
        """Whether every one of `rows` (host tensor) and every view in `views` is resident."""
        if any(v not in self.data for v in views):
            return False
        return bool((self.host_lookup[rows.cpu()] >= 0).all()) if len(rows) else True

    def gather(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        pos = self.lookup[rows]
        return {v: x[pos].float() for v, x in self.data.items()}


class IndexBatches:
    """Minibatches of (rows, targets, task=0, is_exemplar) drawn from index tensors; no DataLoader.

    With `exemplars` (another IndexBatches), every batch is followed by the next exemplar
    batch, concatenated, as SS-IL and AV-CIL do: the epoch length is set by this loader, and
    the exemplar batches of one shuffled pass are replayed in a cycle (the reference wraps its
    exemplar DataLoader in `itertools.cycle`, which caches the first pass); a new epoch
    reshuffles.
    """

    def __init__(
        self,
        rows,
        targets,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        generator: torch.Generator,
        device,
        exemplars: IndexBatches | None = None,
    ):
        self.rows, self.targets = rows.to(device), targets.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.generator = batch_size, shuffle, drop_last, generator
        self.exemplars = exemplars

    def __len__(self) -> int:
        n = len(self.rows)
        if self.drop_last and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self.rows)
        order = (
            torch.randperm(n, generator=self.generator).to(self.rows.device)
            if self.shuffle
            else torch.arange(n, device=self.rows.device)
        )
        replay = itertools.cycle(list(self.exemplars)) if self.exemplars is not None else None
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            rows, targets = self.rows[idx], self.targets[idx]
            is_exemplar = torch.zeros(len(idx), dtype=torch.bool, device=rows.device)
            if replay is not None:
                ex_rows, ex_targets, _, _ = next(replay)
                rows, targets = torch.cat([rows, ex_rows]), torch.cat([targets, ex_targets])
                is_exemplar = torch.cat([is_exemplar, torch.ones(len(ex_rows), dtype=torch.bool, device=rows.device)])
            yield [rows, targets, torch.zeros_like(targets), is_exemplar]


def _silent_evaluator() -> EvaluationPlugin:
    """Avalanche's evaluator with no metrics and no loggers (the harness owns its metrics); avalanche warns
    "No loggers specified" once per strategy, which says nothing here, so it is silenced at this one source."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
        return EvaluationPlugin(loggers=[])


def step_seed(seed: int, t: int, salt: int = 0) -> int:
    """Per-step seed, so a run resumed at step t draws what an uninterrupted run draws."""
    return (seed * 1_000_003 + t * 7919 + salt) % (2**31 - 1)


class HarnessTemplate(SupervisedTemplate):
    """What every harness strategy shares (single- and multi-label): the store, stream, config and
    seed; index-batch views; a placeholder optimizer that `make_optimizer` replaces per step; no
    avalanche loggers (the harness owns its metrics); the previous step's frozen model as teacher;
    bf16 autocast on request."""

    # ------------------------------------------------------------------ what a method may read
    # Set by the harness before training; a method reads these and never replaces them (mammoth's
    # ContinualModel keeps the same kind of block). Avalanche's own fields (model, optimizer,
    # mbatch, mb_x, mb_y, mb_output, loss, device, experience) are documented by avalanche.
    store: FeatureStore  # the dataset's feature store: `store.gather(view, rows)` reads views by store row
    stream: object  # the suite's stream (CILStream or MultiLabelStream): rows and targets per split and step
    cfg: dict  # the cell's resolved config (benchmarks.core.method); every `cfg["key"]` read is checked up front
    modality: str  # "audio", "visual" or "audio-visual"
    views: list[str]  # the store views this method gathers (MethodSpec.required_views)
    seed: int  # the cell's training seed (per-step draws use step_seed(seed, step_index, salt))
    step_index: int  # the step (phase) being trained, from 0; -1 before the first
    old_model: torch.nn.Module | None  # the previous step's final model, frozen (None at step 0)
    resident: object | None  # the step's training views on the device (ResidentViews), None outside training
    eval_resident: object | None  # the rows evaluated after every epoch (ResidentViews), None outside training
    history: list[dict]  # one entry per finished step, kept in the record
    precision: str  # "fp32" or "bf16" (autocast with fp32 master weights)

    def __init__(
        self,
        *,
        model_factory,
        store: FeatureStore,
        stream,
        modality: str,
        config: dict,
        device,
        seed: int,
        views=None,
        plugins=None,
        progress: bool = True,
    ):
        """Keyword arguments only, as `MethodSpec.build` passes them; `views` defaults to `default_views(modality)`."""
        self.model_factory = model_factory
        model = model_factory(stream.protocol.classes_per_step[0])
        self.store, self.stream, self.modality, self.cfg, self.seed = store, stream, modality, config, seed
        self.views = list(views or self.default_views(modality))
        self.progress = progress
        self.old_model = None
        self.resident = None
        self.eval_resident = None
        self.step_index = -1
        self.history: list[dict] = []  # per step: e.g. best_val_epoch, val_acc
        self.precision = config.get("precision", "fp32")
        super().__init__(
            model=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.0),  # replaced per step by make_optimizer
            train_mb_size=config["batch_size"],
            train_epochs=config["epochs"],
            eval_mb_size=config["eval_batch_size"],
            device=device,
            plugins=plugins,
            evaluator=_silent_evaluator(),
        )

    @property
    def step_bounds(self) -> tuple[int, int]:
        return self.stream.protocol.step_bounds(self.step_index)

    def check_model_and_optimizer(self, **kwargs):
        self.model = self.model_adaptation()
        self.make_optimizer()

    def default_views(self, modality: str) -> tuple[str, ...]:
        """The store views gathered when the method's spec names none."""
        raise NotImplementedError

    def keep_teacher(self) -> None:
        """From the second step on, keep the previous step's model, frozen, as `old_model`."""
        if self.step_index > 0:
            self.old_model = copy.deepcopy(self.model).eval()
            for p in self.old_model.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ epoch bookkeeping and progress
    step_word = "step"  # in the progress bar ("phase" for the multi-label suite)

    def _before_training_exp(self, **kwargs):
        super()._before_training_exp(**kwargs)
        self.epoch = 0
        self.bar = tqdm(
            total=self.train_epochs,
            desc=f"  {self.step_word} {self.step_index}",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )

    def training_epoch(self, **kwargs):
        self.model.train()
        self.epoch_loss, self.epoch_batches = 0.0, 0
        super().training_epoch(**kwargs)

    def _after_training_iteration(self, **kwargs):
        self.epoch_loss = self.epoch_loss + self.loss.detach()  # no host sync per iteration
        self.epoch_batches += 1
        super()._after_training_iteration(**kwargs)

    def eval_batches(self, rows: torch.Tensor, model=None):
        """(chunk of rows, its views) in chunks of eval_batch_size, with the model in eval mode meanwhile
        (its mode is restored afterwards). The views come from the device-resident copies when they hold
        every row (`resident`, then `eval_resident`: e.g. the val split evaluated after every epoch), else
        from the store; either way fp32, so the numbers do not depend on where they came from."""
        model = model or self.model
        was_training = model.training
        model.eval()
        source = self.resident_source(rows)
        try:
            for b in range(0, len(rows), self.eval_mb_size):
                chunk = rows[b : b + self.eval_mb_size]
                if source is not None:
                    yield chunk, source.gather(chunk.to(source.lookup.device))
                else:
                    yield chunk, {v: self.store.gather(v, chunk, self.device, torch.float32) for v in self.views}
        finally:
            model.train(was_training)

    def resident_source(self, rows: torch.Tensor):
        """The resident copy (`resident` or `eval_resident`) holding all of `rows` in this method's views, or None."""
        for source in (self.resident, getattr(self, "eval_resident", None)):
            if isinstance(source, ResidentViews) and source.covers(rows, self.views):
                return source
        return None

    def autocast(self):
        enabled = self.precision == "bf16"
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16, enabled=enabled)

    def forward(self):
        with self.autocast():
            return self.model(self.mb_x)

    # ------------------------------------------------------------------ what a method adds to its record
    def step_report(self) -> dict:
        """Method-specific numbers after a step's test pass (JSON-serialisable), kept per step in the record."""
        return {}

    def method_metrics(self, rows: dict) -> dict:
        """Method-specific metrics from the runner's rows (R, A, reports) at the end of the run."""
        return {}

    def method_info(self) -> dict:
        """Method-specific facts for the record (e.g. which weights were loaded)."""
        return {}
