"""MCIL-AudioCLIP as a StoreTemplate strategy (see README.md).

Per task t (no exemplars, no distillation; the reference trains on the current task only):
- train rows: the task's images of the release's whole training split (`train_split:
  train+carved-val`: the train rows plus the val rows the harness carved out of the training images,
  when the store's val split was carved; MCIL selects nothing on val); each is paired with an audio clip of its class
  (`train_pairing: paired`, a fresh deterministic pairing every epoch, datasets.pairing.AudioPairing)
  or, as the release does, with a random clip of the current task (`shuffled`: the batch's
  clips permuted, so image and audio usually disagree; reference 1.3);
- forward: v (image tower with router t), a (frozen audio tower + projection), f = AAVFM(v, a),
  class prototypes of the task's classes from the training template pool (with gradient,
  every iteration), logits over the task's classes with task-local labels;
- loss: methods.mcil_audioclip.losses.mcil_loss;
- optimiser: AdamW over the adapters, routers, fusion (and a learnable audio projection),
  a per-iteration schedule: linear warm-up over `warmup_iters`, then cosine to 0 over the release's
  horizon of epochs x batches iterations (`utils.cosine_lr(..., total_iterations)`); with
  `extra_iteration` the release's one extra iteration per task follows at learning rate 0;
- the model after the last epoch is kept (`model_selection: last`; the reference selects nothing).

Prediction on seen classes: prototypes of all seen classes from the evaluation templates (each
class through its own task's router); each test image is routed by the selected task
(`task_selection: frozen-centroid`: the task whose mean frozen-tower image feature, taken
from its training images, is nearest in cosine; `none`: the single router), paired with its
canonical clip, and classified by argmax over the seen classes.

Each test pass also collects what the MCIL metrics need (benchmarks.metrics.mcil.mcil_metrics):
the seen classes' single-template text mean, the mean image feature and the NMIs, over the
whole test set (default) and over the reference's last eval batch: the last batch of
`eval_batch_size` of the seen test rows in store (folder) order, as the release's unshuffled
DataLoader over `eval_dataset[:t + 1]` yields them (`main.py:59-65`; continuum keeps the dataset's
order when it selects tasks); plus how often fusion fired and, in paper mode, the task-selection accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.core.template import ResidentViews
from benchmarks.metrics.mcil import mcil_metrics, softmax_nmi
from benchmarks.suites.single_label import StoreTemplate
from datasets.errors import ConfigError
from datasets.pairing import AudioPairing
from methods.mcil_audioclip.losses import mcil_loss
from methods.mcil_audioclip.model import MCILAudioCLIP
from methods.mcil_audioclip.moe import moe_modules
from methods.mcil_audioclip.templates import template_pools


class ExtraBatch:
    """The release runs EPOCH * len(loader) + 1 iterations per task (`range(total_iterations + 1)`,
    `models.py:319`): after the last batch the loader is re-created and one batch of a fresh shuffle
    follows (reference 2.2), once per task. `extra_iteration: true`: the extra batch follows the last
    epoch's batches (`last_epoch()` says whether the epoch being iterated is the last)."""

    def __init__(self, loader, last_epoch: Callable[[], bool]):
        self.loader = loader
        self.last_epoch = last_epoch

    def __len__(self) -> int:
        return len(self.loader) + int(self.last_epoch())

    def __iter__(self):
        yield from self.loader
        if self.last_epoch():
            yield next(iter(self.loader))


def carved_val(store) -> bool:
    """Whether the store's val split was carved out of its training images (datasets.adapters.paired_scan
    records `val_split: "carved from train: ..."`), i.e. belongs to the release's training split."""
    return str(store.meta.get("val_split", "")).startswith("carved")


class MCILStrategy(StoreTemplate):
    exemplar_selection = None

    def __init__(self, *, store, stream, config, **kwargs):
        protocol = stream.protocol
        names = store.meta.get("class_prompt_names") or [n.replace("_", " ") for n in store.class_names]
        class_names = [names[c] for c in protocol.class_order]
        task_of_class = [int(t) for t in protocol.step_of_position()]
        pools = template_pools(config, store)
        model = MCILAudioCLIP(
            config, class_names, task_of_class, protocol.num_steps, pools, int(store.meta.get("clip_samples", 16000))
        )
        self.pairing = AudioPairing(store)
        self.centroids: dict[int, torch.Tensor] = {}
        self.train_fired = [0, 0]
        kwargs["model_factory"] = lambda n: model  # built here: it needs the class order and prompts
        super().__init__(store=store, stream=stream, config=config, **kwargs)

    # ------------------------------------------------------------------ set-up per task
    def training_rows(self):
        """The current task's rows only (no memory, as the reference). `train_split: train+carved-val` (the
        release's whole training split): the val rows too when the harness carved them out of the training
        images; `train`: the harness's train split alone. A store with a val split of its own trains on train."""
        rows, targets = self.stream.step("train", self.step_index)
        split = self.cfg["train_split"]
        if split not in ("train", "train+carved-val"):
            raise ConfigError(
                f"mcil_audioclip: train_split {split!r} is not one of 'train+carved-val' (the release's whole "
                "training split) or 'train'; fix it in methods/mcil_audioclip/config.yaml or --set train_split=..."
            )
        if split == "train+carved-val" and carved_val(self.store):
            val_rows, val_targets = self.stream.step("val", self.step_index)
            rows, targets = torch.cat([rows, val_rows]), torch.cat([targets, val_targets])
            order = torch.argsort(rows)  # store order: the release's training folder order
            rows, targets = rows[order], targets[order]
        return rows, targets

    def model_adaptation_step(self):
        self.model.set_trainable(self.step_index)

    def make_optimizer(self, **kwargs):
        """A fresh AdamW per task and its per-iteration schedule (avalanche builds the dataloader first)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=float(self.cfg["lr"]), weight_decay=float(self.cfg["weight_decay"])
        )
        total = self.batches_per_epoch * self.train_epochs  # the release's horizon: EPOCH * num_batches
        warmup = int(self.cfg["warmup_iters"])

        def schedule(i: int) -> float:
            """Multiplier of lr at iteration i: `utils.cosine_lr(optimizer, lr, warmup, total)` of the release
            (continual_clip/utils.py:56-75); the extra iteration i = total gets 0 when total > warmup. The release
            divides by total - warmup: a task of exactly `warmup` batches raises ZeroDivisionError there (utils.py:72)
            and fewer batches give a negative divisor; here the divisor is at least 1, so such a task's extra
            iteration runs at the full lr."""
            if i < warmup:
                return (i + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, total - warmup)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def make_train_dataloader(self, shuffle=True, **kwargs):
        super().make_train_dataloader(shuffle=shuffle, **kwargs)
        self.batches_per_epoch = len(self.dataloader)
        if self.cfg.get("extra_iteration"):
            self.dataloader = ExtraBatch(self.dataloader, lambda: self.epoch == self.train_epochs - 1)
        rows = self.train_rows.numpy()
        # Every epoch's pairing is fixed up front from (seed, epoch), so the step's clips can be resident.
        self.epoch_clips = [
            torch.from_numpy(self.pairing.clip_rows(rows, self.seed, e)).long() for e in range(self.train_epochs)
        ]
        self.bank = ResidentViews(self.pairing.bank, ["waveform"], torch.cat(self.epoch_clips), self.device)
        self.audio_cache = self.embed_resident_clips() if self.model.audio_is_static else None
        self.clip_lookup = torch.full((len(self.store),), -1, dtype=torch.long, device=self.device)
        self.train_fired = [0, 0]
        self.add_task_centroid()

    @torch.no_grad()
    def embed_resident_clips(self) -> torch.Tensor:
        """Audio-tower embeddings of the step's resident clips, in resident order (eval-mode tower)."""
        was = self.model.towers.audio.training
        self.model.towers.audio.eval()
        wav = self.bank.data["waveform"]
        out = []
        for b in range(0, len(wav), self.eval_mb_size):
            with self.autocast():
                out.append(self.model.audio_embedding(wav[b : b + self.eval_mb_size].float()).float())
        self.model.towers.audio.train(was)
        return torch.cat(out)

    def _before_training_epoch(self, **kwargs):
        super()._before_training_epoch(**kwargs)
        self.clip_lookup[self.train_rows.to(self.device)] = self.epoch_clips[self.epoch].to(self.device)

    # ------------------------------------------------------------------ minibatch
    def forward(self):
        rows, lo, hi = self.mb_rows, *self.step_bounds
        clips = self.clip_lookup[rows]
        if self.cfg["train_pairing"] == "shuffled":
            clips = clips[torch.randperm(len(clips), device=clips.device)]
        self.mb_clips = clips  # the bank rows this batch trains with (tests check the pairing)
        route = torch.full(
            (len(rows),), self.step_index if self.model.n_routers > 1 else 0, dtype=torch.long, device=rows.device
        )
        with self.autocast():
            v = self.model.image_features(self.mb_x["clip_image"], route)
            if self.audio_cache is not None:
                a = self.model.audio_features(embedding=self.audio_cache[self.bank.lookup[clips]])
            else:
                a = self.model.audio_features(self.bank.gather(clips)["waveform"])
            f, info = self.model.fusion(v, a)
            protos = self.model.text_prototypes(torch.arange(lo, hi), "train", with_grad=True)
            logits = self.model.logits(f, protos.float())
        self.train_fired[0] = self.train_fired[0] + info["fired"].sum()  # a device tensor: no host read per batch
        self.train_fired[1] += len(rows)
        return {"logits": logits, "v": v, "a": a, "f": f}

    def criterion(self):
        out, lo = self.mb_output, self.step_bounds[0]
        loss, self.loss_parts = mcil_loss(out["logits"], self.mb_y - lo, out["f"], out["v"], out["a"], self.cfg)
        return loss

    def optimizer_step(self):
        keep = self.model.router_grad_mask(self.step_index).to(self.device)
        for m in moe_modules(self.model):
            if m.routers.grad is not None:
                m.routers.grad.mul_(keep)  # only the current task's router learns
        super().optimizer_step()
        self.scheduler.step()

    # ------------------------------------------------------------------ task selection
    def after_step(self):
        """No exemplar memory (the method keeps none)."""

    def add_task_centroid(self):
        """The frozen tower does not change, so the task's centroid is taken before its training."""
        if self.cfg["task_selection"] == "frozen-centroid":
            feats = self.frozen_image_features(self.train_rows)
            self.centroids[self.step_index] = F.normalize(feats.mean(0), dim=0).cpu()

    @torch.no_grad()
    def frozen_image_features(self, rows: torch.Tensor) -> torch.Tensor:
        out = []
        for _, views in self.eval_batches(rows):
            with self.autocast():
                out.append(self.model.image_features(views["clip_image"], None, adapters=False).float())
        return torch.cat(out)

    # ------------------------------------------------------------------ prediction
    def predict_split(self, split: str):
        rows, targets = self.stream.seen(split, self.step_index)
        return self.predict_rows(rows, targets if split == "test" else None), targets

    @torch.no_grad()
    def predict_rows(self, rows: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions for store rows; with `targets` (the test split) also the MCIL metric inputs."""
        model, seen = self.model, self.seen_classes
        was_training = model.training
        model.eval()
        with self.autocast():
            protos = model.text_prototypes(torch.arange(seen), "eval", with_grad=False).float()
        tasks = self.step_index + 1
        centroids = (
            torch.stack([self.centroids[t] for t in range(tasks)]).to(self.device)
            if self.cfg["task_selection"] == "frozen-centroid"
            else None
        )
        preds, vs, as_, fs, fired, routed = [], [], [], [], [], []
        for chunk, views in self.eval_batches(rows):
            images = views["clip_image"]
            clips = self.pairing.eval_clip_rows(chunk.numpy())
            waves = self.pairing.bank.gather("waveform", clips, device=self.device, dtype=torch.float32)
            with self.autocast():
                if centroids is not None:
                    v0 = model.image_features(images, None, adapters=False).float()
                    route = (v0 @ centroids.t()).argmax(1)
                else:
                    route = torch.zeros(len(chunk), dtype=torch.long, device=self.device)
                v = model.image_features(images, route)
                a = model.audio_features(waves)
                f, info = model.fusion(v, a)
            preds.append((f.float() @ protos.t()).argmax(1).cpu())
            if targets is not None:
                vs.append(v.float().cpu()), as_.append(a.float().cpu()), fs.append(f.float().cpu())
                fired.append(info["fired"].cpu()), routed.append(route.cpu())
        model.train(was_training)
        pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
        if targets is not None and vs:
            self.last_report = self.metric_inputs(
                torch.cat(vs), torch.cat(as_), torch.cat(fs), torch.cat(fired), torch.cat(routed), targets, rows
            )
        return pred

    def last_eval_batch(self, rows: torch.Tensor) -> torch.Tensor:
        """Positions in `rows` of the release's last eval batch: its DataLoader (batch `eval_batch_size` = 64,
        no shuffle) runs over the seen tasks' test samples in dataset (folder) order (`main.py:59-65`; continuum
        selects tasks with np.isin, keeping that order), i.e. store order here, and the metrics keep the last
        batch: the final len % 64 samples (64 when it divides), whichever steps they belong to."""
        order = torch.argsort(torch.as_tensor(rows).cpu(), stable=True)
        start = ((len(order) - 1) // self.eval_mb_size) * self.eval_mb_size
        return order[start:]

    @torch.no_grad()
    def metric_inputs(self, v, a, f, fired, routed, targets, rows) -> dict:
        """What the MCIL metrics and the diagnostics need from one test pass over `rows` (module docstring)."""
        with self.autocast():
            # e_t: the single eval template's unnormalised text embeddings of all seen classes, averaged (reference 4.2)
            text_mean = self.model.text_embeddings(torch.arange(self.seen_classes), "single").mean((0, 1)).cpu()
        last = self.last_eval_batch(rows)
        true_task = torch.as_tensor(self.stream.protocol.step_of_position())[targets]
        report = {
            "text_mean": text_mean.tolist(),
            "image_mean": v.mean(0).tolist(),
            "image_mean_last_batch": v[last].mean(0).tolist(),
            "nmi_vf": float(softmax_nmi(v, f)),
            "nmi_af": float(softmax_nmi(a, f)),
            "nmi_vf_last_batch": float(softmax_nmi(v[last], f[last])),
            "nmi_af_last_batch": float(softmax_nmi(a[last], f[last])),
            "fusion_fired_test": float(fired.float().mean()),
            "fusion_fired_train": float(self.train_fired[0]) / max(1, self.train_fired[1]),
            "task_selection_acc": float(100.0 * (routed == true_task).float().mean())
            if self.cfg["task_selection"] != "none"
            else None,
            "router_usage": self.router_usage(),
        }
        return report

    def router_usage(self) -> list[list[float]]:
        """Share of routing choices per (router, expert), summed over all adapters, while training."""
        mods = moe_modules(self.model)
        usage = sum(m.usage.cpu() for m in mods)
        for m in mods:
            m.usage.zero_()
        return (usage / usage.sum(1, keepdim=True).clamp_min(1)).tolist()

    # ------------------------------------------------------------------ records
    def step_report(self) -> dict:
        return dict(self.last_report)

    def method_metrics(self, rows: dict) -> dict:
        reports = rows["reports"]
        out = {}
        for variant, suffix in (("whole-set", ""), ("last-batch", "_last_batch")):
            out[variant] = mcil_metrics(
                rows["R"],
                rows["A"],
                [r["text_mean"] for r in reports],
                [r[f"image_mean{suffix}"] for r in reports],
                reports[-1][f"nmi_vf{suffix}"],
                reports[-1][f"nmi_af{suffix}"],
            )
        out["fusion_fired_test"] = [r["fusion_fired_test"] for r in reports]
        out["fusion_fired_train"] = [r["fusion_fired_train"] for r in reports]
        out["task_selection_acc"] = [r["task_selection_acc"] for r in reports]
        return out

    def method_info(self) -> dict:
        m = self.model
        return {
            "towers": self.cfg["towers"],
            "weights": m.weights_report,
            "experts": m.n_experts,
            "routers": m.n_routers,
            "trainable_parameters": sum(p.numel() for p in m.parameters() if p.requires_grad),
        }

    def model_state(self) -> dict:
        """Only what training changes: the trainable tensors and every buffer (BN statistics drift in
        code mode). The frozen towers are rebuilt from the same weights or the same seed on resume;
        a ViT-B/16 step checkpoint is then a few MB, not 700."""
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        buffers = {n for n, _ in self.model.named_buffers()}
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items() if k in trainable or k in buffers}

    def load_model_state(self, state: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        if unexpected or trainable & set(missing):
            raise ValueError(
                f"step checkpoint does not fit the model: unexpected {unexpected[:5]}, missing trainable "
                f"{sorted(trainable & set(missing))[:5]}"
            )

    def extra_state(self) -> dict:
        return {"centroids": {int(k): v for k, v in self.centroids.items()}}

    def load_extra_state(self, extra: dict) -> None:
        self.centroids = {int(k): v for k, v in extra.get("centroids", {}).items()}
