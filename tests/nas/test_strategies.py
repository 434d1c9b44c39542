import math

import pytest
import torch
from torch.utils.data import Dataset

from pnfs_pipeline.engine.checkpoint import load_checkpoint
from pnfs_pipeline.engine.loss import joints_mse_loss
from pnfs_pipeline.engine.trainer import NonFiniteLossError, TrainConfig, Trainer, split_for_bilevel
from pnfs_pipeline.nas.backbones import build_backbone
from pnfs_pipeline.nas.strategies import (
    STRATEGIES,
    SearchStrategy,
    StrategyConfig,
    ieee_float32,
    unrolled_arch_gradient,
)
from pnfs_pipeline.nas.supernet import FabricConfig, HeadConfig, PartSupernet

PARTS = {"upper": (0, 1), "lower": (2, 3)}


def tiny_supernet(seed: int = 0, dtype=torch.float32) -> PartSupernet:
    torch.manual_seed(seed)
    model = PartSupernet(
        build_backbone("tiny", width=4),
        PARTS,
        4,
        FabricConfig(operators=("zero", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"), depth=4, cut_layers_num=2, factor=1),
        HeadConfig(vector_in_pixel=True, vector_dim=2),
    )
    return model.to(dtype)


class RandomPoses(Dataset):
    """Random images with one-hot-ish heatmaps: enough signal for gradients and resume checks."""

    def __init__(self, count: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, 32, 32, generator=g)
        self.maps = torch.rand(count, 4, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "heatmaps": self.maps[i], "target_weight": torch.ones(4)}


def _batch(n=4, seed=0):
    data = RandomPoses(n, seed)
    return {"image": data.images, "heatmaps": data.maps, "target_weight": torch.ones(n, 4)}


@pytest.mark.parametrize("name", STRATEGIES)
def test_gradients_reach_alpha_and_beta(name):
    model = tiny_supernet()
    strategy = SearchStrategy(model, StrategyConfig(name=name, arch_warmup_epochs=0), total_epochs=2)
    train, arch = _batch(seed=1), _batch(seed=2)
    if strategy.config.bilevel:
        strategy.arch_step(arch, train, joints_mse_loss, weight_lr=0.01)
        grads = [p.grad for p in model.arch_parameters()]
    else:
        weights = strategy.forward_weights(training=True)
        loss = joints_mse_loss(model(train["image"], weights) if weights else model(train["image"]), train)
        trainable = [p for p in model.arch_parameters() if p.requires_grad]
        if not strategy.config.trains_arch:
            assert trainable == []  # none / random keep the architecture frozen during training
            return
        grads = torch.autograd.grad(loss, trainable)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(g.abs().sum() > 0 for g in grads), [g.abs().sum() for g in grads]


def _tf32_flags() -> tuple:
    """What decides TF32 for float32 convolutions and matrix products (torch >= 2.9's API, else the legacy one)."""
    backends = [torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul]
    if all(hasattr(backend, "fp32_precision") for backend in backends):
        return tuple(backend.fp32_precision for backend in backends)
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


def test_second_order_passes_run_without_tf32_and_restore_the_flags():
    """On Ampere and newer GPUs PyTorch runs float32 convolutions in TF32 by default, whose
    rounding swamps darts2's finite difference; the CPU records the flags its passes run under."""
    model = tiny_supernet()
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(_tf32_flags()))
    before = _tf32_flags()
    with ieee_float32():
        full_precision = _tf32_flags()
    assert full_precision != before and _tf32_flags() == before
    unrolled_arch_gradient(model, _batch(seed=1), _batch(seed=2), joints_mse_loss, 0.1)
    assert len(seen) == 4 and set(seen) == {full_precision}  # at w, w', w + eps v and w - eps v
    assert _tf32_flags() == before
    assert torch.backends.cudnn.allow_tf32 in (True, False)  # still readable: a mix of the two APIs raises


def test_second_order_gradient_matches_the_exact_unrolled_gradient():
    model = tiny_supernet(dtype=torch.float64)
    model.eval()  # fixed BN statistics make the loss a smooth function of the weights
    train, arch = _batch(seed=1), _batch(seed=2)
    train = {k: v.double() for k, v in train.items()}
    arch = {k: v.double() for k, v in arch.items()}
    xi = 0.5
    # A small finite-difference radius in float64: ReLU kinks make DARTS' 0.01 too coarse to
    # compare tightly, while the formula is the same.
    unrolled_arch_gradient(model, train, arch, joints_mse_loss, xi, radius=1e-6)
    approx = [p.grad.clone() for p in model.arch_parameters()]

    # Reference: differentiate L_val(w - xi * dL_train/dw, a) through the unrolled step exactly.
    from torch.func import functional_call

    arch_params = model.arch_parameters()
    arch_ids = {id(p) for p in arch_params}
    weights = {n: p for n, p in model.named_parameters() if id(p) not in arch_ids}
    loss_train = joints_mse_loss(model(train["image"]), train)
    grads = torch.autograd.grad(loss_train, list(weights.values()), create_graph=True, allow_unused=True)
    unrolled = {
        n: p - xi * g if g is not None else p for (n, p), g in zip(weights.items(), grads, strict=True)
    }
    params = {**dict(model.named_parameters()), **unrolled}
    loss_val = joints_mse_loss(functional_call(model, params, (arch["image"],)), arch)
    exact = torch.autograd.grad(loss_val, arch_params)
    for a, e in zip(approx, exact, strict=True):
        torch.testing.assert_close(a, e, rtol=5e-3, atol=1e-9)
    # The second-order term matters here: first order alone would differ.
    first_order = torch.autograd.grad(joints_mse_loss(model(arch["image"]), arch), arch_params)
    assert any(not torch.allclose(f, e, rtol=1e-3) for f, e in zip(first_order, exact, strict=True))


def _trainer(tmp_path, epochs, strategy="darts1", seed=0, device="cpu", **settings):
    model = tiny_supernet(seed)
    config = TrainConfig(**{"epochs": epochs, "batch_size": 4, "lr": 0.01, "seed": seed, "device": device, **settings})
    return Trainer(
        model,
        RandomPoses(24, seed=3),
        RandomPoses(8, seed=4),
        config,
        strategy_factory=lambda m, e: SearchStrategy(m, StrategyConfig(name=strategy, seed=seed), e),
        checkpoint_path=tmp_path / "last.pt",
    )


@pytest.mark.parametrize("strategy", ["darts1", "gumbel"])
def test_resumed_search_ends_like_an_uninterrupted_one(tmp_path, strategy, caplog):
    straight = _trainer(tmp_path / "a", epochs=2, strategy=strategy)
    straight.fit()
    expected = [p.detach().clone() for p in straight.model.arch_parameters()]

    first = _trainer(tmp_path / "b", epochs=2, strategy=strategy)
    first.config = TrainConfig(**{**first.config.__dict__, "epochs": 1})  # killed after epoch 1
    first.fit()
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 0
    resumed = _trainer(tmp_path / "b", epochs=2, strategy=strategy)
    with caplog.at_level("INFO", logger="pnfs_pipeline.engine.trainer"):
        resumed.fit(resume=True)
    assert "last.pt after epoch 1\n" in caplog.text + "\n"  # counted as the epoch log lines count
    for got, want in zip(resumed.model.arch_parameters(), expected, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)
    assert [h["epoch"] for h in resumed.history] == [1, 2]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    with pytest.raises(ValueError, match=r"other settings \(train.lr: 0.01 -> 0.1\)\. .* or move the file away"):
        _trainer(tmp_path, epochs=2, lr=0.1).fit(resume=True)
    # the machine's settings may change
    resumed = _trainer(tmp_path, epochs=2, threads=1)
    resumed.fit(resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    # fewer epochs than were trained would label a longer-trained model as an earlier epoch's
    with pytest.raises(ValueError, match=r"it has trained 2 epochs, more than the 1 asked for"):
        _trainer(tmp_path, epochs=1).fit(resume=True)


def test_resumed_cosine_schedule_follows_the_new_number_of_epochs(tmp_path):
    _trainer(tmp_path, epochs=2, scheduler="cosine", lr_min=0.0).fit()
    resumed = _trainer(tmp_path, epochs=4, scheduler="cosine", lr_min=0.0)
    resumed.resume_from(tmp_path / "last.pt")
    # after two of four epochs the closed form is halfway, not the old schedule's end (0)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    resumed.scheduler.step()
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 3 / 4)) / 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("strategy", ["sync", "darts1", "darts2", "gumbel"])
def test_search_on_cuda_follows_the_cpu_search(tmp_path, strategy):
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # float32 on both sides
        on_cpu = _trainer(tmp_path / "cpu", epochs=1, strategy=strategy)
        on_cpu.fit()
        on_gpu = _trainer(tmp_path / "cuda", epochs=1, strategy=strategy, device="cuda")
        on_gpu.fit()
    # darts2's finite-difference Hessian term and gumbel's hard samples amplify rounding: the
    # CPU search alone moved its validation loss by 1.1e-3 (relative) between two CPUs.
    for key in ("train_loss", "val_loss"):
        assert on_gpu.history[0][key] == pytest.approx(on_cpu.history[0][key], rel=5e-3)
    for got, want in zip(on_gpu.model.arch_parameters(), on_cpu.model.arch_parameters(), strict=True):
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.detach().cpu(), want.detach(), rtol=1e-2, atol=1e-3)


def test_non_finite_loss_stops_naming_epoch_and_step(tmp_path):
    trainer = _trainer(tmp_path, epochs=2, strategy="sync")
    calls = {"n": 0}

    def exploding(pred, batch):
        calls["n"] += 1
        loss = joints_mse_loss(pred, batch)
        return loss * float("nan") if calls["n"] > 8 else loss

    trainer.loss_fn = exploding
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step \d+; last good checkpoint: .*last.pt \(after epoch 1\)"):
        trainer.fit()
    # in its first epoch a new run has no checkpoint, whatever an earlier run left at the path
    fresh = _trainer(tmp_path, epochs=2, strategy="sync")
    fresh.loss_fn = lambda pred, batch: joints_mse_loss(pred, batch) * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1; no checkpoint of this run yet"):
        fresh.fit()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 0


@pytest.mark.parametrize("strategy", ["darts1", "gumbel"])
def test_bf16_reaches_the_architecture_step(tmp_path, strategy):
    trainer = _trainer(tmp_path, epochs=1, strategy=strategy, precision="bf16", max_steps_per_epoch=2)
    dtypes = []
    trainer.model.backbone.register_forward_hook(lambda module, args, output: dtypes.append(output[0].dtype))
    trainer.fit()
    # two weight steps, two architecture steps and the validation batches: all in bf16
    assert len(dtypes) >= 5 and set(dtypes) == {torch.bfloat16}


def test_weights_broken_in_an_epochs_last_step_are_not_saved(tmp_path):
    # an infinite gradient in the last step: the losses seen were finite, the weights are not
    trainer = _trainer(tmp_path / "nan", epochs=2, strategy="sync")
    train_epoch = trainer.train_epoch

    def last_step_breaks_a_weight(epoch, progress):
        metrics = train_epoch(epoch, progress)
        with torch.no_grad():
            next(trainer.model.parameters()).view(-1)[0] = float("inf")
        return metrics

    trainer.train_epoch = last_step_breaks_a_weight
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights after epoch 1 \(1 tensors, first .*\); no checkpoint of this run yet"):
        trainer.fit()
    assert not (tmp_path / "nan" / "last.pt").exists()


@pytest.mark.parametrize("strategy", ["sync", "darts1"])
def test_architecture_stays_put_during_warmup_epochs(tmp_path, strategy):
    model = tiny_supernet(0)
    trainer = Trainer(
        model, RandomPoses(24, seed=3), RandomPoses(8, seed=4),
        TrainConfig(epochs=2, batch_size=4, lr=0.01, device="cpu"),
        strategy_factory=lambda m, e: SearchStrategy(m, StrategyConfig(name=strategy, arch_warmup_epochs=1), e),
    )
    moved = []
    trainer.on_epoch_end = lambda epoch, metrics, m: moved.append(
        float(sum(p.detach().abs().sum() for p in m.arch_parameters()))
    )
    trainer.fit()
    assert moved[0] == 0.0 and moved[1] > 0.0  # still at zero after the warm-up epoch, then trained


class _Recorded(RandomPoses):
    """Remembers which samples were read."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[int] = set()

    def __getitem__(self, i):
        self.read.add(int(i))
        return super().__getitem__(i)


def test_random_search_picks_a_discrete_architecture(tmp_path):
    trainer = _trainer(tmp_path, epochs=1, strategy="random", val_max_batches=1)
    train, val = _Recorded(24, seed=3), _Recorded(8, seed=4)
    trainer.train_dataset, trainer.arch_dataset = split_for_bilevel(train, 2, 1)
    trainer.val_dataset = val
    result = trainer.fit()
    assert len(result.extra["finalize"]["candidate_losses"]) == 8
    # candidates are scored on the held-out third of the training set, all of it; the validation
    # set (evaluation's) only gives the epoch's val_loss, within val_max_batches
    assert train.read == set(range(24)) and val.read <= set(range(8))
    # the trainer makes that split itself for random search
    assert len(_trainer(tmp_path, epochs=1, strategy="random").arch_dataset) == 8
    for alpha in trainer.model.arch_alphas:
        assert torch.softmax(alpha, -1).max(-1).values.min() > 0.99


def test_original_strategy_names_are_aliases():
    assert StrategyConfig(name="first_order_gradient").name == "darts1"
    assert StrategyConfig(name="None").name == "none"
    with pytest.raises(ValueError, match="unknown search strategy 'evolution'"):
        StrategyConfig(name="evolution")


def fabric_backbone_supernet() -> PartSupernet:
    torch.manual_seed(0)
    return PartSupernet(
        build_backbone("fabric", factor=1, operators=("zero", "skip_connect", "sep_conv_3x3", "avg_pool_3x3")),
        PARTS,
        4,
        FabricConfig(operators=("zero", "skip_connect", "sep_conv_3x3", "avg_pool_3x3"), depth=4, cut_layers_num=2, factor=1),
        HeadConfig(vector_in_pixel=True, vector_dim=2),
    )


def _one_hot_mixture(backbone, ops: torch.Tensor, slots: torch.Tensor):
    alpha = torch.nn.functional.one_hot(ops, backbone.alphas.shape[-1]).float()
    return alpha.expand(backbone.fabric.num_cells, -1, -1), torch.nn.functional.one_hot(slots, 3).float()


def test_random_search_samples_and_picks_the_fabric_backbones_architecture_too():
    model = fabric_backbone_supernet().eval()
    strategy = SearchStrategy(model, StrategyConfig(name="random", random_candidates=3), total_epochs=1)
    weights = strategy.forward_weights(training=True)
    alpha, beta, active = weights.backbone
    assert alpha.shape == (model.backbone.fabric.num_cells, *model.backbone.alphas.shape)
    assert set(alpha.sum(-1).flatten().tolist()) == {1.0} and set(beta.sum(-1).tolist()) == {1.0}
    assert active == alpha.argmax(-1).tolist()
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        features = model.backbone(x, alpha, beta, active)
        mixed = model.backbone(x)
    assert not torch.allclose(features[0], mixed[0])  # a sampled path, not the softmax mixture

    losses = iter([3.0, 1.0, 2.0])  # the second candidate is the best
    before = torch.Generator().set_state(strategy.generator.get_state())
    strategy.finalize(lambda w: next(losses))
    replay = SearchStrategy(model, StrategyConfig(name="random"), total_epochs=1)
    replay.generator.set_state(before.get_state())
    replay.sample_random_architecture()
    ops, slots = replay.sample_random_architecture()[-1]  # the backbone's choice comes last
    assert torch.equal(model.backbone.alphas.argmax(-1), ops) and torch.equal(model.backbone.betas.argmax(-1), slots)
    assert torch.softmax(model.backbone.alphas, -1).max(-1).values.min() > 0.99


def test_gumbel_samples_one_backbone_op_per_edge_and_trains_its_logits():
    model = fabric_backbone_supernet()
    strategy = SearchStrategy(model, StrategyConfig(name="gumbel"), total_epochs=2)
    weights = strategy.forward_weights(training=True)
    alpha, beta, active = weights.backbone
    assert torch.equal(alpha.detach(), _one_hot_mixture(model.backbone, alpha[0].argmax(-1), torch.zeros(1, dtype=torch.long))[0])
    assert active == alpha.argmax(-1).tolist()
    batch = _batch()
    joints_mse_loss(model(batch["image"], weights), batch).backward()
    assert model.backbone.alphas.grad is not None and model.backbone.alphas.grad.abs().sum() > 0
    assert model.backbone.betas.grad is not None and model.backbone.betas.grad.abs().sum() > 0


def test_a_fresh_run_does_not_overwrite_a_stopped_runs_checkpoint(tmp_path):
    from pnfs_pipeline.engine.trainer import TrainingJob, run_training
    from pnfs_pipeline.engine.unfinished_run import UnfinishedRunError

    class Stop(Exception):
        pass

    def stop_after_the_first_epoch(epoch, metrics, model):
        raise Stop

    def job(resume: bool) -> TrainingJob:
        return TrainingJob(
            model_builder=tiny_supernet,
            train_dataset=RandomPoses(8, seed=3),
            val_dataset=RandomPoses(4, seed=4),
            config=TrainConfig(epochs=2, batch_size=4, device="cpu"),
            strategy=StrategyConfig(name="sync"),
            checkpoint_path=str(tmp_path / "last.pt"),
            resume=resume,
        )

    with pytest.raises(Stop):
        run_training(job(resume=False), on_epoch_end=stop_after_the_first_epoch)
    written = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(UnfinishedRunError, match=r"last.pt holds a run stopped after epoch 1 of 2.*resume=true"):
        run_training(job(resume=False))
    assert (tmp_path / "last.pt").read_bytes() == written
    assert [h["epoch"] for h in run_training(job(resume=True)).history] == [1, 2]
    run_training(job(resume=False))  # a finished run's checkpoint may be replaced


def test_resume_compares_the_architecture_not_the_genotypes_provenance():
    from pnfs_pipeline.engine.trainer import config_differences

    saved = {"train": {"lr": 1e-3, "threads": 2}, "genotype": {"parts": {"head": [1]}, "provenance": {"search": {"finished_at": "10:00"}}}}
    repeated = {"train": {"lr": 1e-3, "threads": 8}, "genotype": {"parts": {"head": [1]}, "provenance": {"search": {"finished_at": "11:00"}}}}
    assert config_differences(saved, repeated) == []
    other = {**repeated, "genotype": {**repeated["genotype"], "parts": {"head": [2]}}}
    assert config_differences(saved, other) == ["genotype.parts.head: [1] -> [2]"]
    # a checkpoint from before trainer.cudnn_benchmark existed, or another GPU setting: the same run
    assert config_differences({"train": {"lr": 1e-3}}, {"train": {"lr": 1e-3, "cudnn_benchmark": False}}) == []


def test_only_rank_zero_checks_for_a_stopped_run(tmp_path, monkeypatch):
    """Under torchrun without a shared filesystem another rank's stale file is not rank 0's."""
    from pnfs_pipeline.engine.checkpoint import save_checkpoint
    from pnfs_pipeline.engine.trainer import TrainingJob, run_training
    from pnfs_pipeline.engine.unfinished_run import UnfinishedRunError

    save_checkpoint({"epoch": 0, "config": {"train": {"epochs": 3}, "retrain": {}}}, tmp_path / "last.pt")
    job = TrainingJob(tiny_supernet, RandomPoses(4), RandomPoses(2), TrainConfig(epochs=1, batch_size=4, device="cpu"),
                      checkpoint_path=str(tmp_path / "last.pt"))
    with pytest.raises(UnfinishedRunError, match=r'stopped after epoch 1 of 3.*--params="retrain.resume=true"'):
        run_training(job)
    monkeypatch.setenv("RANK", "1")
    assert [h["epoch"] for h in run_training(job).history] == [1]
