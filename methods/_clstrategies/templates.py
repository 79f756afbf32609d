"""The harness templates the standard CL strategies stand on (single-label and multi-label).

What they add to `StoreTemplate` / `MultiLabelTemplate`:
- `importance_batches()` / `importance_loss(out, target)`: the step's training rows with their views and the
  strategy's task loss, which the regularisation plugins (`plugins.py`) use in place of avalanche's DataLoader over
  `experience.dataset` and `strategy._criterion`;
- checkpoints: the CL plugins' state (`export_state`) and, for replay, the memory, as plain tensors; on resume the
  avalanche clock's experience counter, which the stock plugins read, is set to the next step;
- replay batches (`n_replay`, `split_batch`): with `exemplar_batching: separate` every minibatch is the current
  batch followed by one memory batch of fixed size (`IndexBatches` with `exemplars`, drop_last), so the two parts are
  sliced off by position, without a boolean index (no host sync).
"""

from __future__ import annotations

import torch

from benchmarks.core.template import IndexBatches, step_seed
from benchmarks.suites.multilabel import MultiLabelTemplate, masked_bce
from benchmarks.suites.single_label import StoreTemplate


class CLPluginState:
    """Mixin: the strategy's CL plugins (those with `export_state`) in the step checkpoints."""

    def cl_plugins(self) -> list:
        return [p for p in self.plugins if hasattr(p, "export_state")]

    def plugin_states(self) -> list[dict]:
        return [p.export_state() for p in self.cl_plugins()]

    def load_plugin_states(self, states: list[dict]) -> None:
        for plugin, state in zip(self.cl_plugins(), states):
            plugin.import_state(state, self.device)
        self.clock.train_exp_counter = self.step_index + 1  # the stock plugins count finished experiences here


class ReplayBatches:
    """Mixin: the replayed part of a `exemplar_batching: separate` minibatch is its last `n_replay` rows."""

    @property
    def n_replay(self) -> int:
        exemplars = getattr(self.dataloader, "exemplars", None)
        return exemplars.batch_size if exemplars is not None else 0

    def split_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(current part, replayed part) of a minibatch tensor."""
        n = len(x) - self.n_replay
        return x[:n], x[n:]


class CLStoreTemplate(CLPluginState, ReplayBatches, StoreTemplate):
    """Single-label base of the CL strategies."""

    def importance_batches(self):
        """(views, (targets,)) of the step's new-class training rows in order, in train_mb_size chunks: the data
        avalanche's EWC/MAS iterate (`strategy.experience.dataset`, unshuffled)."""
        rows, targets = self.stream.step("train", self.step_index)
        for b in range(0, len(rows), self.train_mb_size):
            chunk = rows[b : b + self.train_mb_size]
            views = {v: self.store.gather(v, chunk, device=self.device, dtype=torch.float32) for v in self.views}
            yield views, (targets[b : b + self.train_mb_size].to(self.device),)

    def importance_loss(self, out, target) -> torch.Tensor:
        return self.loss_fn(out, target[0])

    def extra_state(self) -> dict:
        return {**super().extra_state(), "plugins": self.plugin_states()}

    def load_extra_state(self, extra: dict) -> None:
        super().load_extra_state(extra)
        self.load_plugin_states(extra.get("plugins", []))


class CLMultiLabelTemplate(CLPluginState, ReplayBatches, MultiLabelTemplate):
    """Multi-label base of the CL strategies: fine-tuning's BCE (all seen outputs, the phase's labels, every other
    seen column a negative; `methods/ml_fine_tuning`), to which a strategy adds its regulariser or replay."""

    def loss_fn(self, out, y, mask) -> torch.Tensor:
        return masked_bce(out["logits"].float(), y, self.pos_weight, mask=None)

    def importance_batches(self):
        """(views, (y,)) of the phase's training records in order, in train_mb_size chunks."""
        rows, y = self.train_rows, self.train_y
        for b in range(0, len(rows), self.train_mb_size):
            chunk = rows[b : b + self.train_mb_size]
            views = {v: self.store.gather(v, chunk, device=self.device, dtype=torch.float32) for v in self.views}
            yield views, (y[b : b + self.train_mb_size].to(self.device),)

    def importance_loss(self, out, target) -> torch.Tensor:
        return masked_bce(out["logits"].float(), target[0], self.pos_weight, mask=None)

    def extra_state(self) -> dict:
        return {"plugins": self.plugin_states()}

    def load_extra_state(self, extra: dict) -> None:
        self.load_plugin_states(extra.get("plugins", []))

    def resume_state(self) -> dict:
        return {**super().resume_state(), "extra": self.extra_state()}

    def load_resume_state(self, state: dict) -> None:
        super().load_resume_state(state)
        self.load_extra_state(state.get("extra", {}))


class MLReplayTemplate(CLMultiLabelTemplate):
    """Multi-label replay of past phases' records ("ER with the phase's records"): a memory of `memory_records`
    records, balanced over the phases seen (avalanche's default `ExperienceBalancedBuffer` of `ReplayPlugin`,
    `storage_policy.py`): after phase t every phase keeps M // (t+1) records, phase t's chosen at random. Each record
    keeps its own phase's labels and label mask. Every minibatch is the current batch followed by a memory batch
    of `exemplar_batch_size` (avalanche `ReplayDataLoader`)."""

    stores_logits = False  # DER++: also keep each record's logits from the end of its phase

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        C = self.stream.num_classes
        self.mem_rows, self.mem_phase = torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
        self.mem_y, self.mem_mask = torch.empty(0, C), torch.empty(0, C, dtype=torch.bool)
        self.mem_logits = torch.empty(0, C)

    def memory_budget(self) -> int:
        raise NotImplementedError

    def replay_batch_size(self) -> int:
        raise NotImplementedError

    def make_train_dataloader(self, shuffle=True, **kwargs):
        if not len(self.mem_rows):
            return super().make_train_dataloader(shuffle=shuffle, **kwargs)
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.step_index, salt=2))
        seen = self.seen_classes
        self.resident = self._views_for(torch.cat([self.train_rows, self.mem_rows]))
        mem_packed = torch.stack([self.mem_y[:, :seen], self.mem_mask[:, :seen].float()], dim=1)
        size = min(self.replay_batch_size(), len(self.mem_rows))
        exemplars = IndexBatches(self.mem_rows, mem_packed, size, True, True, generator, self.device)
        packed = torch.stack([self.train_y.float(), self.train_mask.float()], dim=1)
        self.dataloader = IndexBatches(
            self.train_rows, packed, self.train_mb_size, shuffle, False, generator, self.device, exemplars
        )

    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)
        self.update_memory()

    def update_memory(self) -> None:
        t = self.step_index
        quota = self.memory_budget() // (t + 1)
        kept = [torch.nonzero(self.mem_phase == p).squeeze(1)[:quota] for p in range(t)]
        keep = torch.cat(kept) if kept else torch.empty(0, dtype=torch.long)
        rows, y, mask = self.stream.train[t]
        generator = torch.Generator().manual_seed(step_seed(self.seed, t, salt=3))
        pick = torch.randperm(len(rows), generator=generator)[:quota]
        self.mem_rows = torch.cat([self.mem_rows[keep], rows[pick]])
        self.mem_y = torch.cat([self.mem_y[keep], y[pick]])
        self.mem_mask = torch.cat([self.mem_mask[keep], mask[pick]])
        self.mem_phase = torch.cat([self.mem_phase[keep], torch.full((len(pick),), t, dtype=torch.long)])
        if self.stores_logits:
            self.mem_logits = torch.cat([self.mem_logits[keep], self.record_logits(rows[pick])])

    @torch.no_grad()
    def record_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, num_classes) logits of the current model in eval mode, NaN beyond the seen classes."""
        out = torch.full((len(rows), self.stream.num_classes), float("nan"))
        seen = self.seen_classes
        parts = []
        for _, views in self.eval_batches(rows):
            parts.append(self.model(views)["logits"][:, :seen].float().cpu())
        if parts:
            out[:, :seen] = torch.cat(parts)
        return out

    def extra_state(self) -> dict:
        state = super().extra_state()
        state["memory"] = {
            "rows": self.mem_rows,
            "y": self.mem_y,
            "mask": self.mem_mask,
            "phase": self.mem_phase,
            "logits": self.mem_logits,
        }
        return state

    def load_extra_state(self, extra: dict) -> None:
        super().load_extra_state(extra)
        mem = extra.get("memory")
        if mem:
            self.mem_rows, self.mem_y, self.mem_mask = mem["rows"], mem["y"], mem["mask"]
            self.mem_phase, self.mem_logits = mem["phase"], mem["logits"]
