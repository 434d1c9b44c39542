"""Search strategies: how architecture parameters (alphas, betas) are used and trained.

- ``none``: uniform mixtures, architecture frozen (plain supernet training).
- ``random``: a random discrete architecture per step, weights shared; at the end the best of
  several sampled architectures on a held-out part of the training set (the bilevel strategies'
  split) becomes the result (random search with weight sharing).
- ``sync``: architecture parameters trained by the weight optimizer on the same batches (the
  PNFS paper's setting).
- ``darts1`` / ``darts2``: bilevel optimisation on a 2:1 split of the training set, first order or
  second order (unrolled weights, finite-difference Hessian-vector product, no model copies).
- ``gumbel``: GDAS-style hard straight-through Gumbel samples with an annealed temperature; only the
  sampled op of each edge runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from pnfs_pipeline.nas.supernet import ArchitectureWeights, PartSupernet

logger = logging.getLogger(__name__)

STRATEGY_ALIASES = {
    "None": "none",
    "first_order_gradient": "darts1",
    "second_order_gradient": "darts2",
}
STRATEGIES = ("none", "random", "sync", "darts1", "darts2", "gumbel")

LossFn = Callable[[torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]


# Strategies that train the architecture parameters (none and random leave them as they are).
ARCHITECTURE_TRAINING_STRATEGIES = ("sync", "darts1", "darts2", "gumbel")


def canonical_strategy(name: str) -> str:
    key = STRATEGY_ALIASES.get(name, str(name).lower())
    if key not in STRATEGIES:
        raise ValueError(
            f"unknown search strategy {name!r}; valid: {list(STRATEGIES)} "
            f"(aliases: {list(STRATEGY_ALIASES)})"
        )
    return key


@dataclass(frozen=True)
class StrategyConfig:
    name: str = "sync"
    arch_lr: float = 0.03
    arch_weight_decay: float = 0.01
    arch_warmup_epochs: int = 0
    split_for_train: int = 2
    split_for_arch: int = 1
    gumbel_tau_max: float = 10.0
    gumbel_tau_min: float = 0.1
    random_candidates: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", canonical_strategy(self.name))

    @property
    def bilevel(self) -> bool:
        return self.name in ("darts1", "darts2", "gumbel")

    @property
    def trains_arch(self) -> bool:
        return self.name in ARCHITECTURE_TRAINING_STRATEGIES


def one_hot_logits(index: torch.Tensor, num: int, confidence: float = 10.0) -> torch.Tensor:
    """Architecture logits that put (almost) all softmax mass on ``index``."""
    return torch.nn.functional.one_hot(index, num).float() * confidence


class SearchStrategy:
    """Per-step behaviour of a strategy around the weight update."""

    def __init__(self, model: PartSupernet, config: StrategyConfig, total_epochs: int) -> None:
        self.model = model
        self.config = config
        self.total_epochs = max(total_epochs, 1)
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.arch_optimizer: torch.optim.Optimizer | None = None
        # Averages architecture gradients over distributed workers (a no-op in one process).
        self.sync_gradients: Callable[[list[torch.Tensor]], None] = lambda grads: None
        if config.bilevel:
            self.arch_optimizer = torch.optim.Adam(
                model.arch_parameters(), lr=config.arch_lr, weight_decay=config.arch_weight_decay
            )
        for parameter in model.arch_parameters():
            parameter.requires_grad_(config.trains_arch)

    # ---- what the weight optimizer trains ---------------------------------------------------
    def weight_optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        groups = [{"params": [p for p in self.model.weight_parameters() if p.requires_grad],
                   "lr": lr, "weight_decay": weight_decay, "name": "weights"}]
        if self.config.name == "sync":
            # The paper trains alphas and betas in the weights' optimizer, on the same batches.
            # Their own group lets arch_lr speed them up; arch_lr = lr and no decay is the original.
            groups.append({"params": self.model.arch_parameters(), "lr": self.config.arch_lr,
                           "weight_decay": self.config.arch_weight_decay, "name": "architecture"})
        return groups

    def hold_architecture_in_warmup(self) -> None:
        """Before the weight optimizer's step: in ``sync``'s warm-up epochs the architecture
        parameters (in that optimizer) get no gradient, so it leaves them as they are, as the
        bilevel strategies' warm-up does."""
        if self.config.name == "sync" and self.epoch < self.config.arch_warmup_epochs:
            for parameter in self.model.arch_parameters():
                parameter.grad = None

    # ---- architecture weights for a forward pass ---------------------------------------------
    @property
    def gumbel_tau(self) -> float:
        c = self.config
        progress = self.epoch / max(self.total_epochs - 1, 1)
        return c.gumbel_tau_max - (c.gumbel_tau_max - c.gumbel_tau_min) * progress

    def _searched_logits(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(alpha, beta) logits per part, then the searchable backbone's if there is one."""
        logits = list(zip(self.model.arch_alphas, self.model.arch_betas, strict=True))
        if self.model.searchable_backbone:
            logits.append((self.model.backbone.alphas, self.model.backbone.betas))
        return logits

    def _expand_alpha(self, alpha: torch.Tensor, index: int) -> torch.Tensor:
        """Shared (edges, ...) alphas of part ``index`` (or of the backbone, after the parts)
        -> (cells, edges, ...)."""
        if index < len(self.model.arch_alphas):
            return self.model.expand_alpha(alpha, index)
        return alpha.expand(self.model.backbone.fabric.num_cells, *alpha.shape)

    def _weights(self, alphas, betas, active) -> ArchitectureWeights:
        parts = len(self.model.arch_alphas)
        backbone = (alphas[parts], betas[parts], active[parts]) if len(alphas) > parts else None
        return ArchitectureWeights(alphas[:parts], betas[:parts], active[:parts], backbone)

    def sample_random_architecture(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Random (alpha index, beta index) per part, then for a searchable backbone: one op
        per edge row, one input per cell."""
        choices = []
        for alpha, beta in self._searched_logits():
            ops = torch.randint(alpha.shape[-1], alpha.shape[:-1], generator=self.generator)
            slots = torch.randint(beta.shape[-1], beta.shape[:-1], generator=self.generator)
            choices.append((ops, slots))
        return choices

    def discrete_weights(self, choices: list[tuple[torch.Tensor, torch.Tensor]]) -> ArchitectureWeights:
        alphas, betas, active = [], [], []
        device = self.model.arch_alphas[0].device
        for index, ((ops, slots), (alpha_logits, beta_logits)) in enumerate(zip(choices, self._searched_logits(), strict=True)):
            alpha = self._expand_alpha(torch.nn.functional.one_hot(ops, alpha_logits.shape[-1]).float(), index)
            alphas.append(alpha.to(device))
            betas.append(torch.nn.functional.one_hot(slots, beta_logits.shape[-1]).float().to(device))
            active.append(alpha.argmax(-1).tolist())
        return self._weights(alphas, betas, active)

    def gumbel_weights(self) -> ArchitectureWeights:
        alphas, betas, active = [], [], []
        for index, (alpha, beta) in enumerate(self._searched_logits()):
            uniform = torch.rand(alpha.shape, generator=self.generator).to(alpha.device)
            gumbels = -torch.log((-torch.log(uniform.clamp_min(1e-10))).clamp_min(1e-10))
            soft = torch.softmax((alpha + gumbels) / self.gumbel_tau, dim=-1)
            chosen = soft.argmax(dim=-1)
            hard = torch.nn.functional.one_hot(chosen, alpha.shape[-1]).to(soft)
            straight_through = hard - soft.detach() + soft
            alphas.append(self._expand_alpha(straight_through, index))
            active.append(self._expand_alpha(chosen.unsqueeze(-1), index).squeeze(-1).tolist())
            betas.append(torch.softmax(beta, dim=-1))
        return self._weights(alphas, betas, active)

    def forward_weights(self, training: bool) -> ArchitectureWeights | None:
        """``None`` means the supernet's own softmax weights."""
        if training and self.config.name == "random":
            return self.discrete_weights(self.sample_random_architecture())
        if training and self.config.name == "gumbel":
            return self.gumbel_weights()
        return None

    # ---- one training step ----------------------------------------------------------------
    def arch_step(
        self,
        arch_batch: dict[str, torch.Tensor],
        train_batch: dict[str, torch.Tensor],
        loss_fn: LossFn,
        weight_lr: float,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> float | None:
        """Update the architecture parameters (bilevel strategies); returns the arch loss.

        ``autocast``: the trainer's precision context for the forward pass. darts2 stays in
        float32, TF32 off too (:func:`ieee_float32`): its finite-difference Hessian term moves
        each weight by 0.01 / |v| of v, which a bfloat16 copy of the weights or TF32's rounding
        would swamp.
        """
        if not self.config.bilevel or self.epoch < self.config.arch_warmup_epochs:
            return None
        assert self.arch_optimizer is not None
        self.arch_optimizer.zero_grad(set_to_none=True)
        if self.config.name == "darts2":
            loss = unrolled_arch_gradient(self.model, train_batch, arch_batch, loss_fn, weight_lr, sync=self.sync_gradients)
        else:
            weights = self.forward_weights(training=True)
            with autocast():
                output = self.model(arch_batch["image"], weights)
            loss = loss_fn(output.float(), arch_batch)
            arch = self.model.arch_parameters()
            grads = torch.autograd.grad(loss, arch, allow_unused=True)
            for parameter, grad in zip(arch, grads, strict=True):
                parameter.grad = grad if grad is not None else torch.zeros_like(parameter)
            loss = loss.detach()
        self.sync_gradients([p.grad for p in self.model.arch_parameters()])
        self.arch_optimizer.step()
        return float(loss)

    # ---- the result --------------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, evaluate_loss: Callable[[ArchitectureWeights | None], float]) -> dict | None:
        """For ``random``: pick the best sampled architecture; sets alphas/betas to its one-hot."""
        if self.config.name != "random":
            return None
        best, best_loss, losses = None, math.inf, []
        for _ in range(self.config.random_candidates):
            choices = self.sample_random_architecture()
            loss = evaluate_loss(self.discrete_weights(choices))
            losses.append(loss)
            if loss < best_loss:
                best, best_loss = choices, loss
        assert best is not None
        for (ops, slots), (alpha, beta) in zip(best, self._searched_logits(), strict=True):
            alpha.copy_(one_hot_logits(ops, alpha.shape[-1]))
            beta.copy_(one_hot_logits(slots, beta.shape[-1]))
        logger.info("random search: best of %d sampled architectures has held-out loss %.6f", len(losses), best_loss)
        return {"candidate_losses": losses, "best_loss": best_loss}


@contextmanager
def ieee_float32() -> Iterator[None]:
    """Float32 convolutions and matrix products in full precision inside the block.

    PyTorch lets cuDNN run float32 convolutions in TF32 (a 10-bit mantissa, ~5e-4 relative) on
    Ampere and newer GPUs; darts2's finite difference moves each weight by ~1e-5 of itself, which
    that rounding swamps (emulated on the tests' supernet: the Hessian term off by 158%)."""
    backends = [torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul]
    if all(hasattr(backend, "fp32_precision") for backend in backends):
        # torch >= 2.9: the legacy allow_tf32 flags may not be mixed with these (reading them raises)
        saved = [backend.fp32_precision for backend in backends]
        for backend in backends:
            backend.fp32_precision = "ieee"
        try:
            yield
        finally:
            for backend, value in zip(backends, saved, strict=True):
                backend.fp32_precision = value
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@ieee_float32()  # on a GPU the finite difference would drown in TF32's rounding
def unrolled_arch_gradient(
    model: nn.Module,
    train_batch: dict[str, torch.Tensor],
    arch_batch: dict[str, torch.Tensor],
    loss_fn: LossFn,
    xi: float,
    radius: float = 0.01,
    sync: Callable[[list[torch.Tensor]], None] | None = None,
) -> torch.Tensor:
    """DARTS' second-order architecture gradient, written into the arch parameters' ``.grad``.

    w' = w - xi * dL_train/dw;  g = dL_val(w', a)/da - xi * H v  with  v = dL_val(w', a)/dw' and
    H v ~ (dL_train(w + eps v, a)/da - dL_train(w - eps v, a)/da) / (2 eps), eps = radius / |v|.
    Weights are swapped in with ``torch.func.functional_call``: no model copies.

    ``sync`` averages gradients over distributed workers in place: each worker holds a slice of
    the global batches, so dL_train/dw (for w') and v are averaged before use, and the result is
    the gradient one process computes on the global batches (architecture gradients are averaged
    by the caller, as for every strategy).
    """
    arch = model.arch_parameters()
    arch_ids = {id(p) for p in arch}
    names = [n for n, p in model.named_parameters() if id(p) not in arch_ids and p.requires_grad]
    weights = dict(model.named_parameters())
    # Virtual passes must not disturb the model's BatchNorm statistics.
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def loss_at(weight_values: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        params = {**weights, **weight_values}
        out = functional_call(model, (params, buffers), (batch["image"],))
        return loss_fn(out, batch)

    w = {n: weights[n] for n in names}
    train_loss = loss_at(w, train_batch)
    grads_w = [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(torch.autograd.grad(train_loss, list(w.values()), allow_unused=True), w.values(), strict=True)
    ]
    if sync is not None:
        sync(grads_w)
    unrolled = {
        n: (p - xi * g).detach() for (n, p), g in zip(w.items(), grads_w, strict=True)
    }
    for tensor in unrolled.values():
        tensor.requires_grad_(True)
    val_loss = loss_at(unrolled, arch_batch)
    grads = torch.autograd.grad(val_loss, list(unrolled.values()) + arch, allow_unused=True)
    v = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[: len(names)], unrolled.values(), strict=True)]
    d_arch = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads[len(names):], arch, strict=True)]
    if sync is not None:
        sync(v)

    norm = torch.sqrt(sum((g * g).sum() for g in v))
    eps = radius / (norm + 1e-12)
    with torch.no_grad():
        plus = {n: w[n] + eps * g for n, g in zip(names, v, strict=True)}
        minus = {n: w[n] - eps * g for n, g in zip(names, v, strict=True)}
    grad_plus = torch.autograd.grad(loss_at(plus, train_batch), arch, allow_unused=True)
    grad_minus = torch.autograd.grad(loss_at(minus, train_batch), arch, allow_unused=True)
    for parameter, d, gp, gm in zip(arch, d_arch, grad_plus, grad_minus, strict=True):
        gp = gp if gp is not None else torch.zeros_like(parameter)
        gm = gm if gm is not None else torch.zeros_like(parameter)
        hessian_vector = (gp - gm) / (2.0 * eps)
        parameter.grad = (d - xi * hessian_vector).detach()
    return val_loss.detach()
