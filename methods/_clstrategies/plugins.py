"""Avalanche's regularisation plugins on the harness's index batches, fixed once here for every method.

What avalanche-lib 0.6.0 gets wrong for this harness, and what this module does instead:

- EWC (`plugins/ewc.py`) and MAS (`plugins/mas.py`) compute their importances by wrapping
  `strategy.experience.dataset` in a DataLoader and calling the model on `x.to(device)` with
  `strategy._criterion(out, y)` (ewc.py:154-171, mas.py:66-100). Here the experience holds store
  rows, the model takes a dict of views and returns a dict, and the criterion is the strategy's
  `criterion()`: every one of those calls breaks. `StoreEWC` / `StoreMAS` keep the plugins'
  penalty (`before_backward`) and importance accumulation (`update_importances`, the MAS
  alpha-average), and take the importances from `strategy.importance_batches()` (the step's
  training rows with their views, in order) and `strategy.importance_loss(out, batch)`.
- MAS runs its importance pass in train mode (mas.py:67): with CNN14's BatchNorm that pass
  overwrites the running statistics of the selected model; here it runs in eval mode. Its penalty
  checks `if not strategy.loss` (mas.py:131): a host read every iteration, and an error on a zero
  loss; dropped here.
- EWC's Fisher is avalanche's squared gradient of each minibatch's mean loss (ewc.py:163-182;
  avalanche#1224: by design). The EWC paper's diagonal Fisher is the mean of per-sample squared
  gradients, which is B times larger for a noise-dominated gradient; the lambdas of the
  benchmarks that run online EWC (mammoth `ewc_on`) were tuned with per-sample Fisher. Both are
  here (`fisher: per-sample`, the default, computed with torch.func in chunks; `fisher: minibatch`).
- SI (`plugins/synaptic_intelligence.py`) copies every parameter and gradient to the CPU twice
  per iteration (`extract_weights`/`extract_grad`: `.cpu()`, lines 207-226), a device sync per
  step, and its path integral uses the gradient of the total loss including its own penalty
  (lines 252-266) where Zenke et al. integrate the unregularised loss's gradient. `SynapticIntelligence`
  keeps avalanche's formulas (importance c * w / (delta^2 + eps), cumulative, optionally clipped (avalanche: 0.001),
  penalty lambda/2 * sum Omega (theta - theta*)^2, BatchNorm parameters excluded) on the device,
  with the penalty's own gradient removed from the path integral.
- Resume: the plugins' state is plain tensors (`export_state`/`import_state`), saved in the step
  checkpoints; avalanche's plugins keep `ParamData` objects that only a pickled strategy keeps.
"""

from __future__ import annotations

import warnings

import torch
from avalanche.training.plugins import EWCPlugin, MASPlugin, SupervisedPlugin
from avalanche.training.utils import ParamData, copy_params_dict, zerolike_params_dict
from torch.func import functional_call, grad, vmap
from torch.nn.modules.batchnorm import _NormBase

FISHER_ESTIMATORS = ("per-sample", "minibatch")


def grow_param_data(stores: list[dict[str, ParamData]], model: torch.nn.Module) -> None:
    """Zero-pad stored ParamData to the model's grown parameters once per step, before the penalty's per-iteration
    `expand` (avalanche's `ParamData.expand` indexes with a list, which torch warns about on every growth)."""
    shapes = dict((k, p.shape) for k, p in model.named_parameters())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)
        for store in stores:
            for k, data in store.items():
                if k in shapes:
                    data.expand(shapes[k])


def _to_param_data(tensors: dict[str, torch.Tensor], prefix: str = "") -> dict[str, ParamData]:
    return {k: ParamData(prefix + k, v.shape, init_tensor=v.clone(), device=v.device) for k, v in tensors.items()}


def _plain(params: dict[str, ParamData]) -> dict[str, torch.Tensor]:
    return {k: p.data.detach().cpu() for k, p in params.items()}


def _to_device(tensors: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in tensors.items()}


# ---------------------------------------------------------------------------------------- importances
def per_sample_gradients(model: torch.nn.Module, loss_fn, names: list[str]):
    """f(views, targets) -> {name: (n, *shape)} gradients of loss_fn(model(views_i), targets_i) for each sample i
    (torch.func: functional_call + vmap(grad)); the model's buffers (BatchNorm statistics in eval mode) held fixed."""
    params = {k: p.detach() for k, p in model.named_parameters() if k in names}
    buffers = dict(model.named_buffers())

    def one(p, views, targets):
        out = functional_call(model, (p, buffers), ({k: x[None] for k, x in views.items()},))
        return loss_fn(out, tuple(x[None] for x in targets))

    per = vmap(grad(one), in_dims=(None, 0, 0))
    return lambda views, targets: per(params, views, targets)


def fisher_diagonal(strategy, per_sample: bool = True, chunk_bytes: int = 2**30) -> dict[str, ParamData]:
    """Diagonal empirical Fisher of the step's training data, in eval mode (`importance_loss` with the true labels).

    per_sample: F = (1/N) sum_i (d l_i / d theta)^2 (Kirkpatrick et al. 2017), per-sample gradients by torch.func in
    chunks whose gradients fit in `chunk_bytes`.
    minibatch: avalanche's F = (1/#batches) sum_b (d mean_{i in b} l_i / d theta)^2 (`plugins/ewc.py:163-182`)."""
    model = strategy.model
    importances = zerolike_params_dict(model)
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    chunk = max(1, chunk_bytes // (4 * sum(p.numel() for p in model.parameters() if p.requires_grad)))
    was_training = model.training
    model.eval()
    seen, batches = 0, 0
    try:
        grads = per_sample_gradients(model, strategy.importance_loss, names) if per_sample else None
        for views, target in strategy.importance_batches():
            n = len(next(iter(views.values())))
            if per_sample:
                for b in range(0, n, chunk):
                    g = grads({k: x[b : b + chunk] for k, x in views.items()}, tuple(x[b : b + chunk] for x in target))
                    for k in names:
                        importances[k].data += (g[k].float() ** 2).sum(0)
            else:
                model.zero_grad(set_to_none=True)
                strategy.importance_loss(model(views), target).backward()
                for k, p in model.named_parameters():
                    if p.grad is not None:
                        importances[k].data += p.grad.detach().float() ** 2
            seen, batches = seen + n, batches + 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for imp in importances.values():
        imp.data /= float(max(seen if per_sample else batches, 1))
    return importances


def output_norm_importance(strategy) -> dict[str, ParamData]:
    """MAS importance (Aljundi et al., ECCV 2018; `plugins/mas.py:84-113`): per minibatch, |d mean_i ||f(x_i)||^2
    / d theta| of the logits' squared L2 norm, averaged over the minibatches; no labels. In eval mode (see module)."""
    model = strategy.model
    importance = zerolike_params_dict(model)
    was_training = model.training
    model.eval()
    batches = 0
    try:
        for views, _ in strategy.importance_batches():
            model.zero_grad(set_to_none=True)
            logits = model(views)["logits"].float()
            logits.norm(p="fro", dim=1).pow(2).mean().backward()
            for k, p in model.named_parameters():
                if p.grad is not None:
                    importance[k].data += p.grad.detach().abs()
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for imp in importance.values():
        imp.data /= float(max(batches, 1))
    return importance


# ---------------------------------------------------------------------------------------- EWC
class StoreEWC(EWCPlugin):
    """avalanche's online EWC (Schwarz et al., ICML 2018, as `EWCPlugin(mode="online")`): penalty
    lambda * sum F* (theta - theta*)^2 (ewc.py:94-110) with F* <- decay F* + F_t (ewc.py:197-222), importances from
    the harness's batches (see the module)."""

    def __init__(self, ewc_lambda: float, decay_factor: float, fisher: str = "per-sample"):
        if fisher not in FISHER_ESTIMATORS:
            raise ValueError(f"fisher must be one of {FISHER_ESTIMATORS}, got {fisher!r}")
        super().__init__(ewc_lambda, mode="online", decay_factor=decay_factor)
        self.fisher = fisher

    def before_training_exp(self, strategy, **kwargs):
        grow_param_data([*self.saved_params.values(), *self.importances.values()], strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        t = strategy.clock.train_exp_counter
        self.update_importances(fisher_diagonal(strategy, per_sample=self.fisher == "per-sample"), t)
        self.saved_params[t] = copy_params_dict(strategy.model)
        if t > 0:  # online mode keeps the last parameters only (ewc.py:129-130)
            self.saved_params.pop(t - 1, None)

    def export_state(self) -> dict:
        if not self.importances:
            return {}
        t = max(self.importances)
        return {"exp": t, "params": _plain(self.saved_params[t]), "importances": _plain(self.importances[t])}

    def import_state(self, state: dict, device) -> None:
        if state:
            t = int(state["exp"])
            self.saved_params[t] = _to_param_data(_to_device(state["params"], device))
            self.importances[t] = _to_param_data(_to_device(state["importances"], device), "imp_")


# ---------------------------------------------------------------------------------------- MAS
class StoreMAS(MASPlugin):
    """avalanche's MAS: penalty lambda * sum Omega (theta - theta*)^2 (mas.py:117-143), Omega <- alpha Omega +
    (1 - alpha) Omega_t (mas.py:145-174), importances from the harness's batches in eval mode (see the module)."""

    def _get_importance(self, strategy):
        return output_norm_importance(strategy)

    def before_training_exp(self, strategy, **kwargs):
        grow_param_data([self.params or {}, self.importance or {}], strategy.model)

    def before_backward(self, strategy, **kwargs):
        """The stock penalty (mas.py:134-143) without its `if not strategy.loss` check (mas.py:131), which reads the
        loss on the host every iteration and raises on a loss of exactly zero."""
        if strategy.clock.train_exp_counter == 0 or not self.importance:
            return
        penalty = 0.0
        for name, param in strategy.model.named_parameters():
            if name in self.importance:
                imp, ref = self.importance[name].expand(param.shape), self.params[name].expand(param.shape)
                penalty = penalty + torch.sum(imp * (param - ref).pow(2))
        strategy.loss = strategy.loss + self._lambda * penalty

    def export_state(self) -> dict:
        if not self.importance:
            return {}
        return {"params": _plain(self.params), "importance": _plain(self.importance)}

    def import_state(self, state: dict, device) -> None:
        if state:
            self.params = _to_param_data(_to_device(state["params"], device))
            self.importance = _to_param_data(_to_device(state["importance"], device))


# ---------------------------------------------------------------------------------------- SI
def si_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters SI regularises: trainable ones outside normalisation layers (avalanche
    `not_excluded_parameters`, synaptic_intelligence.py:359-399, excludes every `_NormBase` parameter)."""
    norm = {
        f"{m_name}.{p_name}" if m_name else p_name
        for m_name, m in model.named_modules()
        if isinstance(m, _NormBase)
        for p_name, _ in m.named_parameters(recurse=False)
    }
    return [(k, p) for k, p in model.named_parameters() if p.requires_grad and k not in norm]


def _grow(t: torch.Tensor, shape) -> torch.Tensor:
    """Zero-pad a stored tensor along the one grown dimension (a classifier gaining rows), as `ParamData.expand`."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def si_omega(cum_path: torch.Tensor, delta: torch.Tensor, eps: float, c: float = 1.0) -> torch.Tensor:
    """SI's per-step importance term (synaptic_intelligence.py:311-322): c * w / (delta^2 + eps), with w the path
    integral sum_k g_k (theta_{k+1} - theta_k) of the step (negative where the loss went down) and delta the step's
    total parameter change. avalanche accumulates the negated sum over steps as the importance."""
    return c * cum_path / (delta * delta + eps)


class SynapticIntelligence(SupervisedPlugin):
    """SI (Zenke et al., ICML 2017) with avalanche's formulas, on the device:

        during step t, per iteration: w += g_unreg * (theta_after - theta_before)
        after step t: W <- W + w / ((theta_end - theta_start)^2 + eps); Omega = min(-W, clip) or -W; theta* = end
        penalty: lambda / 2 * sum Omega (theta - theta*)^2

    g_unreg is the gradient of the strategy's loss without this penalty: the penalty's own gradient
    lambda * Omega * (theta - theta*) is subtracted from the parameter's gradient (see the module)."""

    def __init__(self, si_lambda: float, eps: float = 1e-7, clip: float | None = 1e-3):
        super().__init__()
        self.si_lambda, self.eps, self.clip = si_lambda, eps, clip
        self.anchor: dict[str, torch.Tensor] = {}  # theta*, the parameters after the previous step
        self.omega: dict[str, torch.Tensor] = {}  # Omega, clipped importance
        self.cum: dict[str, torch.Tensor] = {}  # W, the accumulated (negative) importance sum
        self.start: dict[str, torch.Tensor] = {}
        self.path: dict[str, torch.Tensor] = {}
        self.theta_prev: dict[str, torch.Tensor] = {}  # the parameters before the current iteration

    def before_training_exp(self, strategy, **kwargs):
        for k, p in si_parameters(strategy.model):
            for d in (self.anchor, self.omega, self.cum):
                if k in d:
                    d[k] = _grow(d[k], p.shape)
            self.start[k] = p.detach().clone()
            self.path[k] = torch.zeros_like(p, dtype=torch.float32)

    def penalty(self, model) -> torch.Tensor:
        total = None
        for k, p in si_parameters(model):
            if k in self.omega:
                term = (self.omega[k] * (p.float() - self.anchor[k]) ** 2).sum()
                total = term if total is None else total + term
        return 0.5 * self.si_lambda * total if total is not None else None

    def before_backward(self, strategy, **kwargs):
        pen = self.penalty(strategy.model)
        if pen is not None:
            strategy.loss = strategy.loss + pen

    def before_training_iteration(self, strategy, **kwargs):
        self.theta_prev = {k: p.detach().clone() for k, p in si_parameters(strategy.model)}

    def after_training_iteration(self, strategy, **kwargs):
        for k, p in si_parameters(strategy.model):
            if p.grad is None:
                continue
            g = p.grad.detach().float()
            if k in self.omega:  # remove d(penalty)/d(theta) at the point where backward ran
                g = g - self.si_lambda * self.omega[k] * (self.theta_prev[k].float() - self.anchor[k])
            self.path[k] += g * (p.detach().float() - self.theta_prev[k].float())

    def after_training_exp(self, strategy, **kwargs):
        for k, p in si_parameters(strategy.model):
            end = p.detach().float()
            step = si_omega(self.path[k], end - self.start[k].float(), self.eps)
            self.cum[k] = self.cum.get(k, torch.zeros_like(end)) + step
            self.omega[k] = -self.cum[k] if self.clip is None else torch.clamp(-self.cum[k], max=self.clip)
            self.anchor[k] = end.clone()
        self.path, self.start, self.theta_prev = {}, {}, {}

    def export_state(self) -> dict:
        cpu = lambda d: {k: v.detach().cpu() for k, v in d.items()}
        return {"anchor": cpu(self.anchor), "omega": cpu(self.omega), "cum": cpu(self.cum)} if self.omega else {}

    def import_state(self, state: dict, device) -> None:
        if state:
            self.anchor, self.omega, self.cum = (_to_device(state[k], device) for k in ("anchor", "omega", "cum"))
