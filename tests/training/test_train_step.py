"""The compiled train step against upstream's PyTorch steps (fine-tuning: layer-decay AdamW and GradScaler; MAE
pre-training: AdamW betas 0.9 / 0.95 and timm's weight-decay groups); accumulation; loss scaling."""
import math
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from engine_finetune_mindspore import train_one_epoch
from tests.parity import assert_within, mindspore_twin, random_images, set_mode
from util_mindspore.data.mixup import one_hot
from util_mindspore.models.compute_policy import apply_policy, policy_for
from util_mindspore.models.weights import load_arrays_into_model
from util_mindspore.training.lr_decay import param_groups_lrd, param_groups_weight_decay
from util_mindspore.training.lr_sched import learning_rate
from util_mindspore.training.optim import AdamW
from util_mindspore.training.train_step import ClassifierLoss, MaeLoss, TrainStep

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
pytest.importorskip("timm", reason="the PyTorch reference needs timm==0.9.2")
from util_mindspore.reference.torch_models import (  # noqa: E402
    create_mae_reference,
    create_reference,
    cuda_autocast_on_cpu,
    explicit_attention,
    numpy_state_dict,
    randomize_,
    upstream_add_weight_decay,
    upstream_adjust_learning_rate,
    upstream_param_groups_lrd,
)

SCHEDULE = SimpleNamespace(lr=4e-3, min_lr=1e-6, warmup_epochs=2, epochs=6)


def build_pair(depth=2, size=32, classes=3):
    ref = randomize_(create_reference("vit_tiny_patch16", img_size=size, num_classes=classes, depth=depth), seed=31)
    ours = mindspore_twin("vit_tiny_patch16", numpy_state_dict(ref), img_size=size, num_classes=classes, depth=depth)
    return ref, ours


def our_train_step(model, clip_grad, layer_decay=0.65, weight_decay=0.05, accum_iter=1):
    scales, decays, _ = param_groups_lrd(model, weight_decay, model.no_weight_decay(), layer_decay)
    optimizer = AdamW(model.trainable_params(), scales, decays)
    step = TrainStep(ClassifierLoss(model), optimizer, clip_grad=clip_grad, accum_iter=accum_iter)
    step.set_train(True)
    return step


def upstream_optimizer(ref, layer_decay=0.65, weight_decay=0.05):
    groups = upstream_param_groups_lrd(ref, weight_decay, ref.no_weight_decay(), layer_decay)
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=SCHEDULE.lr)


def assert_step_matches_upstream(step, ref, opt, lr, before, bound, what, betas=(0.9, 0.999)):
    """One optimizer step against upstream's, on every trainable element:

    1. Adam's first moment, (1 - beta1) x the (clipped) gradient, equals upstream's within 1e-5 of its tensor's
       largest (the README's bound for gradients): the gradients agree, everywhere;
    2. the second moment, (1 - beta2) g^2, likewise: within 2e-5 of its tensor's largest (what gradients agreeing
       by 1e-5 of theirs allow) plus 2e-5 of the element (the Adam kernel holds 1 - beta2 in float32);
    3. every updated weight equals torch.optim.AdamW's formula applied to our own moments, computed in float64,
       within float32 rounding (1e-6 of the step's lr, plus 2 float32 units of the weight): the step is AdamW;
    4. where Adam's update is well conditioned (sqrt of the bias-corrected second moment >= 1e-6), the updated
       weight equals upstream's within `bound`, relative to the tensor's largest weight (the README's figure).
    Below that, Adam's g / (sqrt(v) + 1e-8) turns the rounding of gradients that agree by 1 into moves of any size
    up to lr, in either framework: there 1-3 are what can be checked, and they are, element by element."""
    optimizer = step.optimizer
    theirs = dict(ref.named_parameters())
    t = float(optimizer.step.asnumpy())
    # the kernel's bias corrections come from its float32 betas (1 - 0.999f = 0.00099998713)
    bc1, bc2 = 1 - float(np.float32(betas[0])) ** t, 1 - float(np.float32(betas[1])) ** t
    worst = 0.0
    for i, param in enumerate(optimizer.params):
        state = opt.state[theirs[param.name]]
        m, v = optimizer.exp_avg[i].asnumpy(), optimizer.exp_avg_sq[i].asnumpy()
        m_ref, v_ref = state["exp_avg"].numpy(), state["exp_avg_sq"].numpy()
        assert np.abs(m - m_ref).max() <= 1e-5 * max(np.abs(m_ref).max(), 1e-30), f"{param.name}: first moment"
        assert (np.abs(v - v_ref) <= 2e-5 * (v_ref + v_ref.max())).all(), f"{param.name}: second moment"
        step_lr = lr * float(optimizer.lr_scales[i].asnumpy())
        decay = float(optimizer.weight_decays[i].asnumpy())
        w0 = before[param.name].astype(np.float64)
        expected = w0 * (1 - step_lr * decay) - step_lr / bc1 * m / (np.sqrt(v.astype(np.float64) / bc2) + 1e-8)
        weights = param.asnumpy()
        slack = 1e-6 * step_lr + 2 * np.spacing(np.abs(weights))
        assert (np.abs(weights - expected) <= slack).all(), f"{param.name}: not AdamW of its own moments"
        conditioned = np.sqrt(v_ref / (1 - betas[1] ** t)) >= 1e-6
        reference = theirs[param.name].detach().numpy()
        diff = np.abs(weights - reference)[conditioned].max(initial=0.0)
        worst = max(worst, diff / max(np.abs(reference).max(), 1e-12))
    assert_within(what, worst, bound)


def test_layer_decay_groups_equal_upstream():
    ref, ours = build_pair()
    scales, decays, groups = param_groups_lrd(ours, 0.05, ours.no_weight_decay(), 0.65)
    theirs = {}
    for group in upstream_param_groups_lrd(ref, 0.05, ref.no_weight_decay(), 0.65):
        for name in group["names"]:
            theirs[name] = (group["lr_scale"], group["weight_decay"])
    ours_by_name = {p.name: (s, d) for p, s, d in zip(ours.trainable_params(), scales, decays)}
    assert set(ours_by_name) == set(theirs)
    for name, (scale, decay) in theirs.items():  # pytest.approx takes flat sequences, not dicts of tuples
        assert ours_by_name[name][0] == pytest.approx(scale, rel=1e-12), name
        assert ours_by_name[name][1] == decay, name


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_one_step_equals_upstream_step(mode):
    """layer_decay 0.65, weight_decay 0.05, mid-warmup lr, clip_grad 1.0: same weights after one step."""
    set_mode(mode)
    ref, ours = build_pair()
    images, labels = random_images(4, 32, seed=32), np.array([0, 2, 1, 1])
    epoch_f = 0.9  # mid-warmup
    lr = learning_rate(epoch_f, SCHEDULE)

    opt = upstream_optimizer(ref)
    assert upstream_adjust_learning_rate(opt, epoch_f, **vars(SCHEDULE)) == pytest.approx(lr)
    ref.train()
    loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(images)), torch.from_numpy(labels))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    opt.step()

    step = our_train_step(ours, clip_grad=1.0)
    before = {p.name: p.asnumpy().copy() for p in ours.trainable_params()}
    our_loss, finite, _ = step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), ms.Tensor(lr, ms.float32), True)
    assert bool(finite.asnumpy()) and abs(float(our_loss.asnumpy()) - loss.item()) < 1e-6
    assert_step_matches_upstream(step, ref, opt, lr, before, 5e-7, f"one train step vs upstream, relative ({mode})")


def test_adamw_matches_torch_adamw_after_ten_steps():
    """The optimizer alone: the same gradients into ours and torch.optim.AdamW (upstream groups), 10 steps."""
    set_mode("graph")
    ref, ours = build_pair()
    opt = upstream_optimizer(ref)
    scales, decays, _ = param_groups_lrd(ours, 0.05, ours.no_weight_decay(), 0.65)
    params = ours.trainable_params()
    adamw = AdamW(params, scales, decays)
    by_name = dict(ref.named_parameters())
    rng = np.random.default_rng(50)
    for it in range(10):
        lr = upstream_adjust_learning_rate(opt, it / 4, **vars(SCHEDULE))
        grads = [(rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-4, 0)).astype(np.float32) for p in params]
        for p, g in zip(params, grads):
            by_name[p.name].grad = torch.from_numpy(g)
        opt.step()
        adamw(ms.mutable(tuple(ms.Tensor(g) for g in grads)), ms.Tensor(lr, ms.float32))
    worst = 0.0
    for i, p in enumerate(params):
        expected = by_name[p.name].detach().numpy()
        rel = np.abs(p.asnumpy() - expected).max() / np.abs(expected).max()
        worst = max(worst, rel)
        # the Adam kernel holds beta2 in float32 (1 - 0.999f = 0.00099998713): moments differ by 1.3e-5 relative
        np.testing.assert_allclose(adamw.exp_avg_sq[i].asnumpy(),
                                   opt.state[by_name[p.name]]["exp_avg_sq"].numpy(), rtol=2e-5, atol=1e-12)
    assert_within("AdamW after 10 steps vs torch.optim.AdamW, worst relative", worst, 1e-6)


def test_gradient_accumulation_equals_one_big_batch():
    """Two accumulated half-batches give the big batch's (clipped) gradient: compared through Adam's first
    moment, which is linear in the gradient (the weights themselves go through Adam's ill-conditioned
    g / (|g| + eps) where a gradient is ~0)."""
    set_mode("graph")
    _, big = build_pair()
    _, small = build_pair()
    images, labels = random_images(4, 32, seed=40), np.array([0, 1, 2, 1])
    lr = ms.Tensor(1e-3, ms.float32)
    big_step = our_train_step(big, clip_grad=1.0)
    big_step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), lr, True)
    step = our_train_step(small, clip_grad=1.0, accum_iter=2)
    step(ms.Tensor(images[:2]), ms.Tensor(one_hot(labels[:2], 3)), lr, False)
    assert float(step.optimizer.step.asnumpy()) == 0.0  # accumulating only
    step(ms.Tensor(images[2:]), ms.Tensor(one_hot(labels[2:], 3)), lr, True)
    assert float(step.optimizer.step.asnumpy()) == 1.0
    for a, b in zip(big_step.optimizer.exp_avg, step.optimizer.exp_avg):
        scale = np.abs(a.asnumpy()).max()
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=0, atol=1e-5 * scale, err_msg=a.name)
    assert all(np.abs(p.asnumpy()).max() == 0 for p in step.accum)


def test_overflow_skips_the_step_and_lowers_the_scale():
    set_mode("graph")
    _, ours = build_pair()
    step = our_train_step(ours, clip_grad=None)
    step.loss_scale.set_data(ms.Tensor(3e38, ms.float32))  # scaled gradients overflow to inf
    before = {n: p.asnumpy().copy() for n, p in ours.parameters_and_names()}
    images, labels = random_images(2, 32), np.array([0, 1])
    _, finite, scale = step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), ms.Tensor(1e-3, ms.float32), True)
    assert not bool(finite.asnumpy())
    assert float(step.loss_scale.asnumpy()) == pytest.approx(1.5e38, rel=1e-6)
    assert float(step.optimizer.step.asnumpy()) == 0.0
    assert all(np.abs(m.asnumpy()).max() == 0 for m in step.optimizer.exp_avg)
    for name, param in ours.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), before[name])
        assert np.isfinite(param.asnumpy()).all()
    # the next step with a sane scale trains again
    step.loss_scale.set_data(ms.Tensor(2.0 ** 16, ms.float32))
    _, finite, _ = step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), ms.Tensor(1e-3, ms.float32), True)
    assert bool(finite.asnumpy()) and float(step.optimizer.step.asnumpy()) == 1.0


def _upstream_amp_step(ref, opt, scaler, images, labels):
    """One iteration of upstream's engine on a GPU: autocast forward and loss, GradScaler backward, unscale,
    clip_grad_norm_ 1.0, step (skipped when a gradient is not finite), update."""
    opt.zero_grad()
    with cuda_autocast_on_cpu():
        loss = torch.nn.functional.cross_entropy(ref(torch.from_numpy(images)), torch.from_numpy(labels))
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    return loss.item()


def _amp_pair(init_scale):
    ref, ours = build_pair()
    explicit_attention(ref).train()
    apply_policy(ours, policy_for("O2", "float16", "CPU"))
    opt = upstream_optimizer(ref)
    lr = upstream_adjust_learning_rate(opt, 0.9, **vars(SCHEDULE))
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=2000)
    step = our_train_step(ours, clip_grad=1.0)
    step.loss_scale.set_data(ms.Tensor(init_scale, ms.float32))
    return ref, ours, opt, scaler, step, lr


def test_o2_steps_equal_upstream_autocast_and_gradscaler_steps():
    """From GradScaler's 65536 on random weights both overflow first (float16 gradients), skip, halve the scale,
    then take the same step: the loss scale and its counter, the loss, and Adam's moments (linear and quadratic
    in the unscaled, clipped gradient) agree. Moments within 5e-3 relative: ten units of float16 rounding."""
    set_mode("graph")
    ref, ours, opt, scaler, step, lr = _amp_pair(2.0 ** 16)
    images, labels = random_images(4, 32, seed=32), np.array([0, 2, 1, 1])
    skipped = 0
    for _ in range(8):
        their_loss = _upstream_amp_step(ref, opt, scaler, images, labels)
        loss, finite, _ = step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), ms.Tensor(lr, ms.float32), True)
        assert bool(finite.asnumpy()) == bool(opt.state)  # torch creates Adam state on its first taken step
        assert float(step.loss_scale.asnumpy()) == scaler.get_scale()
        assert int(step.good_steps.asnumpy()) == int(scaler._growth_tracker)
        assert float(loss.asnumpy()) == pytest.approx(their_loss, rel=1e-3)
        if opt.state:
            break
        skipped += 1
    assert opt.state and skipped >= 1, "expected overflow first, then a taken step"
    by_name = dict(ref.named_parameters())
    worst = 0.0
    for param, m, v in zip(step.optimizer.params, step.optimizer.exp_avg, step.optimizer.exp_avg_sq):
        state = opt.state[by_name[param.name]]
        for ours_moment, theirs in ((m, state["exp_avg"]), (v, state["exp_avg_sq"])):
            theirs = theirs.numpy()
            rel = np.linalg.norm(ours_moment.asnumpy() - theirs) / max(np.linalg.norm(theirs), 1e-30)
            worst = max(worst, rel)
    assert_within("O2 train step vs upstream autocast + GradScaler, Adam moments, worst relative", worst, 5e-3)


def test_forced_overflow_skips_the_step_as_gradscaler_does():
    set_mode("graph")
    ref, ours, opt, scaler, step, lr = _amp_pair(2.0 ** 100)  # the scaled float16 gradients overflow
    before = {n: p.asnumpy().copy() for n, p in ours.parameters_and_names()}
    ref_before = {n: p.detach().numpy().copy() for n, p in ref.named_parameters()}
    images, labels = random_images(2, 32, seed=33), np.array([0, 1])
    _upstream_amp_step(ref, opt, scaler, images, labels)
    _, finite, _ = step(ms.Tensor(images), ms.Tensor(one_hot(labels, 3)), ms.Tensor(lr, ms.float32), True)
    assert not bool(finite.asnumpy()) and not opt.state
    assert float(step.loss_scale.asnumpy()) == scaler.get_scale() == 2.0 ** 99
    assert int(step.good_steps.asnumpy()) == int(scaler._growth_tracker) == 0
    assert float(step.optimizer.step.asnumpy()) == 0.0
    for name, param in ours.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), before[name])
        np.testing.assert_array_equal(dict(ref.named_parameters())[name].detach().numpy(), ref_before[name])


class _FakeLoader:
    def __init__(self, batches):
        self.batches, self.epoch = batches, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def test_lr_of_every_iteration_equals_upstream_formula():
    set_mode("graph")
    _, ours = build_pair()
    step = our_train_step(ours, clip_grad=None)
    batches = [(random_images(2, 32, seed=i), np.array([0, 1], np.int32), np.arange(2)) for i in range(5)]
    args = SimpleNamespace(accum_iter=1, nb_classes=3, rank=0, distributed=False, **vars(SCHEDULE))
    seen = []
    for epoch in range(3):
        _, lrs = train_one_epoch(step, _FakeLoader(batches), epoch, args)
        seen.extend(lrs)
    expected = []
    for epoch in range(3):
        for it in range(5):
            e = it / 5 + epoch
            if e < SCHEDULE.warmup_epochs:
                expected.append(SCHEDULE.lr * e / SCHEDULE.warmup_epochs)
            else:
                expected.append(SCHEDULE.min_lr + (SCHEDULE.lr - SCHEDULE.min_lr) * 0.5 * (
                    1 + math.cos(math.pi * (e - SCHEDULE.warmup_epochs) / (SCHEDULE.epochs - SCHEDULE.warmup_epochs))))
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert float(step.optimizer.step.asnumpy()) == 15.0


def _mae_pair(name, size, **overrides):
    ref = randomize_(create_mae_reference(name, img_size=size, norm_pix_loss=True, **overrides), seed=41)
    ours = M.create_model(name, img_size=size, norm_pix_loss=True, **overrides)
    assert load_arrays_into_model(ours, numpy_state_dict(ref)).missing == []
    return ref, ours


def assert_mae_step_matches_upstream(name, size, bound, what, **overrides):
    """upstream engine_pretrain + main_pretrain: AdamW(add_weight_decay(0.05), betas 0.9 / 0.95) at a warm-up lr,
    the same masking noise; the updated weights."""
    ref, ours = _mae_pair(name, size, **overrides)
    rng = np.random.default_rng(42)
    images = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    noise = rng.random((2, ours.num_patches), dtype=np.float32)
    lr = 1.5e-4 * 0.3
    opt = torch.optim.AdamW(upstream_add_weight_decay(ref, 0.05), lr=lr, betas=(0.9, 0.95))
    ref.train()
    loss, _, _ = ref(torch.from_numpy(images), 0.75, torch.from_numpy(noise))
    loss.backward()
    opt.step()
    scales, decays = param_groups_weight_decay(ours, 0.05)
    step = TrainStep(MaeLoss(ours, 0.75), AdamW(ours.trainable_params(), scales, decays, betas=(0.9, 0.95)),
                     loss_scaling=False)
    step.set_train(True)
    before = {p.name: p.asnumpy().copy() for p in ours.trainable_params()}
    our_loss, _, _ = step(ms.Tensor(images), ms.Tensor(noise), ms.Tensor(lr, ms.float32), True)
    assert abs(float(our_loss.asnumpy()) - loss.item()) <= 1e-5 * loss.item()
    fixed = {"pos_embed", "decoder_pos_embed"}
    for name_, param in ours.parameters_and_names():
        if name_ in fixed:  # the sin-cos tables never train
            np.testing.assert_array_equal(param.asnumpy(), dict(ref.named_parameters())[name_].detach().numpy())
    trainable = {n for n, p in ref.named_parameters() if p.requires_grad}
    assert {p.name for p in step.optimizer.params} == trainable
    assert_step_matches_upstream(step, ref, opt, lr, before, bound, what, betas=(0.9, 0.95))


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_one_mae_pre_training_step_equals_upstreams(mode):
    set_mode(mode)
    assert_mae_step_matches_upstream("mae_vit_base_patch16", 64, 1e-6, f"MAE step vs upstream, relative, ViT-B "
                                     f"depth 2 ({mode})", depth=2, decoder_depth=2)
    set_mode("graph")


@pytest.mark.vitl
def test_one_vit_large_mae_pre_training_step_equals_upstreams():
    set_mode("graph")
    assert_mae_step_matches_upstream("mae_vit_large_patch16", 224, 1e-6, "MAE step vs upstream, relative (ViT-L)")
