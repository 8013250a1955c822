"""The layers: their backward rules against torch, and the CPU and plain kernel forms against each other."""
import mindspore as ms
import numpy as np
import pytest

import models_vit_mindspore as M
from tests.parity import assert_within, random_images, relative_error, set_mode
from util_mindspore.models.compute_policy import ComputePolicy, apply_policy
from util_mindspore.models.layers import DropPath, Softmax

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (pip install -e '.[dev]')")

CPU_FORMS, PLAIN_FORMS = ComputePolicy(cpu_forms=True), ComputePolicy(cpu_forms=False)


class _InputGrad(ms.nn.Cell):
    """d/dx of sum(cell(x) * weights): the backward a training step runs, compiled in graph mode."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.grad = ms.ops.GradOperation()

    def weighted_sum(self, x, weights):
        return (self.cell(x) * weights).sum()

    def construct(self, x, weights):
        return self.grad(self.weighted_sum)(x, weights)


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("policy", [CPU_FORMS, PLAIN_FORMS], ids=["cpu", "plain"])
def test_softmax_backward_matches_torch(mode, policy):
    set_mode(mode)
    rng = np.random.default_rng(6)
    x = (rng.standard_normal((2, 3, 9, 9)) * 4).astype(np.float32)
    weights = rng.standard_normal(x.shape).astype(np.float32)
    softmax = apply_policy(Softmax(), policy)
    ours = _InputGrad(softmax)(ms.Tensor(x), ms.Tensor(weights)).asnumpy()
    xt = torch.from_numpy(x).requires_grad_(True)
    (torch.softmax(xt, -1) * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(ours, xt.grad.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(softmax(ms.Tensor(x)).asnumpy(), ms.ops.softmax(ms.Tensor(x), -1).asnumpy())


class _SentinelSoftmaxBackward(ms.nn.Cell):
    """Softmax whose backward says 7 everywhere: where it shows, this rule is the one that ran."""

    def construct(self, x):
        return ms.ops.softmax(x, axis=-1)

    def bprop(self, x, out, dout):
        return (ms.ops.ones_like(dout) * 7.0,)


class _SentinelBiasAddBackward(ms.nn.Cell):
    """BiasAdd whose bias gradient says 7 everywhere."""

    def __init__(self):
        super().__init__()
        self.bias_add = ms.ops.BiasAdd()

    def construct(self, x, bias):
        return self.bias_add(x, bias)

    def bprop(self, x, bias, out, dout):
        return dout, ms.ops.ones_like(bias) * 7.0


class _BiasGrad(ms.nn.Cell):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear
        self.grad = ms.ops.GradOperation(get_by_list=True)
        self.params = ms.ParameterTuple(linear.trainable_params())

    def weighted_sum(self, x, weights):
        return (self.linear(x) * weights).sum()

    def construct(self, x, weights):
        return self.grad(self.weighted_sum, self.params)(x, weights)[1]


@pytest.mark.parametrize("mode", ["pynative", "graph"])
def test_the_cpu_forms_gradients_come_from_their_own_backward_rules(mode, monkeypatch):
    """The test above passes with MindSpore's stock softmax backward too; this one shows that the CPU forms'
    gradients come from their own rules (layers._SoftmaxWithMatmulBackward, _BiasAddWithMatmulBackward): with each
    rule swapped for one that says 7, the CPU forms' gradients are 7 and the plain forms' are unchanged."""
    from util_mindspore.models import layers
    set_mode(mode)
    rng = np.random.default_rng(9)
    x, weights = (rng.standard_normal((2, 4, 5, 5)) * 3).astype(np.float32), rng.standard_normal((2, 4, 5, 5))
    linear_x, linear_w = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((6, 4))

    def gradients():
        out = {}
        for form, policy in (("cpu", CPU_FORMS), ("plain", PLAIN_FORMS)):
            softmax, linear = apply_policy(Softmax(), policy), apply_policy(layers.Linear(8, 4), policy)
            out[form] = (_InputGrad(softmax)(ms.Tensor(x), ms.Tensor(weights, ms.float32)).asnumpy(),
                         _BiasGrad(linear)(ms.Tensor(linear_x), ms.Tensor(linear_w, ms.float32)).asnumpy())
        return out

    before = gradients()
    monkeypatch.setattr(layers, "_SoftmaxWithMatmulBackward", _SentinelSoftmaxBackward)
    monkeypatch.setattr(layers, "_BiasAddWithMatmulBackward", _SentinelBiasAddBackward)
    after = gradients()
    assert (after["cpu"][0] == 7.0).all() and (after["cpu"][1] == 7.0).all()
    np.testing.assert_array_equal(after["plain"][0], before["plain"][0])
    np.testing.assert_array_equal(after["plain"][1], before["plain"][1])
    np.testing.assert_allclose(before["cpu"][1], linear_w.sum(axis=0), rtol=1e-6)  # the real bias gradient


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("policy", [CPU_FORMS, PLAIN_FORMS], ids=["cpu", "plain"])
def test_drop_path_scales_kept_samples_as_timm_and_backpropagates_the_mask(mode, policy):
    """timm: x * (bernoulli(keep) / keep), whole samples; the gradient is that same per-sample factor."""
    set_mode(mode)
    keep = 0.7
    drop = apply_policy(DropPath(1.0 - keep), policy)
    drop.set_train(True)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 5, 8)).astype(np.float32)
    out = drop(ms.Tensor(x)).asnumpy()
    factor = np.float32(1.0) / np.float32(keep)
    kept = np.array([np.array_equal(o, xi * factor) for o, xi in zip(out, x)])
    dropped = np.array([not o.any() for o in out])
    assert (kept | dropped).all() and kept.any() and dropped.any()

    weights = rng.standard_normal(x.shape).astype(np.float32)
    grad = _InputGrad(drop)(ms.Tensor(x), ms.Tensor(weights)).asnumpy()
    per_sample = np.array([g[0, 0] / w[0, 0] for g, w in zip(grad, weights)], np.float32)
    assert np.all(np.isclose(per_sample, 0.0, atol=1e-7) | np.isclose(per_sample, factor, rtol=1e-6))
    np.testing.assert_allclose(grad, weights * per_sample[:, None, None], rtol=1e-6, atol=1e-7)


def _twin_models(name, size, **kwargs):
    """The same random weights in two models, one with the CPU forms and one with the plain forms (LayerScale
    gammas 0.05-0.5, so that DINOv2's blocks weigh in the logits)."""
    first = M.create_model(name, img_size=size, num_classes=3, **kwargs)
    second = M.create_model(name, img_size=size, num_classes=3, **kwargs)
    rng = np.random.default_rng(9)
    for (param_name, a), (_, b) in zip(first.parameters_and_names(), second.parameters_and_names()):
        values = a.asnumpy()
        if param_name.endswith("gamma"):
            values = rng.uniform(0.05, 0.5, values.shape).astype(np.float32)
        a.set_data(ms.Tensor(values))
        b.set_data(ms.Tensor(values))
    return apply_policy(first, CPU_FORMS), apply_policy(second, PLAIN_FORMS)


def _loss_of(model):
    def loss(x, y):
        return ms.ops.cross_entropy(model(x), y)
    return loss


@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("name,size,kwargs", [
    ("vit_tiny_patch16", 32, dict(depth=2, global_pool=True)),
    ("vit_tiny_patch16", 32, dict(depth=2, global_pool=False)),
    ("RETFound_dinov2", 28, dict(depth=2))])
def test_cpu_and_plain_forms_give_the_same_logits_and_gradients(mode, name, size, kwargs):
    """The forms GPU and Ascend run (transposed heads, stock softmax and GeLU, broadcast multiplies, Conv2D)
    against the CPU forms, on the same weights: forward and every parameter's gradient."""
    set_mode(mode)
    cpu, plain = _twin_models(name, size, **kwargs)
    images, labels = ms.Tensor(random_images(4, size, seed=8)), ms.Tensor(np.array([0, 2, 1, 2], np.int32))
    results = []
    for model in (cpu, plain):
        model.set_train(False)
        logits = model(images).asnumpy()
        _, grads = ms.value_and_grad(_loss_of(model), None, model.trainable_params())(images, labels)
        results.append((logits, [g.asnumpy() for g in grads]))
    (logits_cpu, grads_cpu), (logits_plain, grads_plain) = results
    diff = relative_error(logits_cpu, logits_plain)
    assert_within(f"{name} CPU vs plain kernel forms, logits relative to max(1, |logit|) ({mode})",
                  diff, 5e-6)
    for param, g_cpu, g_plain in zip(cpu.trainable_params(), grads_cpu, grads_plain):
        rel = np.linalg.norm(g_cpu - g_plain) / max(np.linalg.norm(g_cpu), 1e-12)
        assert rel <= 1e-5, f"{param.name}: gradients differ by {rel:.2e} between the forms"
