"""The DRL step as fast as the trunk allows: no host synchronisation, one graph for --compile.

Issue "Pretraining as fast as the trunk allows". A training step (batch preparation, deformation,
forward, losses and logs) must not read a value back from the device: no ``.item()``, no
``float(tensor)``, no Python branch on a tensor. Everything random is drawn from the step's
generator on the device before the tensors-only part (:meth:`DRL.forward_losses`), which
``--compile`` compiles whole, without a graph break.
"""

import contextlib
from unittest import mock

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import histodrl.deform
import histodrl.pretext.drl as drl_module
from histodrl.pretext.drl import DRL
from histodrl.runs.sampling import step_generator

pytestmark = pytest.mark.usefixtures("one_thread")

#: What reading a tensor on the host goes through (a synchronisation on an accelerator).
HOST_READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _config(**over):
    base = {
        "method": "drl",
        "data": "folder:/nonexistent",
        "out": "/nonexistent/run",
        "crop": 64,
        "width": 0.125,
        "batch_size": 4,
        "lambda_": 0.5,
        "gamma": 0.1,
        "log_every": 1,
    }
    base.update(over)
    return base


@contextlib.contextmanager
def no_host_reads():
    """Every host read of a tensor raises; with CUDA, so does every synchronising CUDA call."""

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name}() during the step: a host synchronisation")

        return method

    with contextlib.ExitStack() as stack:
        for name in HOST_READS:
            stack.enter_context(mock.patch.object(torch.Tensor, name, refuse(name)))
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("error")
            stack.callback(torch.cuda.set_sync_debug_mode, "default")
        yield


@pytest.fixture()
def accelerator_path(monkeypatch):
    """On a CPU ``histodrl.deform._per_image`` validates sigma by reading it (free there, never
    done on an accelerator): the tests take the accelerator's path."""
    monkeypatch.setattr(histodrl.deform, "_compiling", lambda: True)


def test_the_guard_catches_a_host_read():
    with no_host_reads():
        with pytest.raises(AssertionError, match="item"):
            torch.ones(()).item()
        with pytest.raises(AssertionError, match="__bool__"):
            bool(torch.ones(()) > 0)
        with pytest.raises(AssertionError, match="__float__"):
            float(torch.ones(()))
    assert torch.ones(()).item() == 1.0


def test_the_deformation_does_not_print_its_sigma_tensor(monkeypatch):
    monkeypatch.setattr(histodrl.deform, "_compiling", lambda: True)  # the accelerator's path
    module = DRL(_config()).to(DEVICE)
    x = torch.rand(4, 3, 64, 64, device=DEVICE)
    module._step_gen = step_generator(0, 0, 0, DEVICE)
    with no_host_reads():
        module.deform(x)


@pytest.mark.usefixtures("accelerator_path")
@pytest.mark.parametrize("over", [{}, {"no_fem": True, "gch": "soft", "resample_original": True}])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, over):
    """Steps of a real fit (Lightning, logging every step, the run's FiniteWatch) on the device:
    the batch preparation and ``training_step`` (deformation, forward, losses, ``self.log``) run
    with every host read refused, and with CUDA in ``set_sync_debug_mode("error")``. With CUDA the
    first step is not guarded: it copies the cached constants (normalisation, flip table) to the
    device once."""
    from histodrl.runs.trainer import make_trainer
    from histodrl.runs.watch import FiniteWatch

    module = DRL(_config(**over))
    images = torch.randint(0, 256, (12, 3, 64, 64), dtype=torch.uint8)
    module.loader_factory = lambda m: DataLoader(TensorDataset(images), batch_size=4)
    unguarded = 1 if DEVICE == "cuda" else 0
    calls = {"on_after_batch_transfer": 0, "training_step": 0}
    returned = []

    def guarded(name):
        fn = getattr(module, name)

        def call(*args, **kwargs):
            calls[name] += 1
            guard = no_host_reads() if calls[name] > unguarded else contextlib.nullcontext()
            with guard:
                out = fn(*args, **kwargs)
            if name == "training_step":
                returned.append(out)
            return out

        return call

    for name in calls:
        monkeypatch.setattr(module, name, guarded(name))
    trainer = make_trainer(
        tmp_path / "run",
        max_steps=3,
        accelerator=DEVICE,
        progress=False,
        log_every=1,
        extra_callbacks=[FiniteWatch(checkpoint_every=500)],
    )
    trainer.fit(module)
    assert calls == {"on_after_batch_transfer": 3, "training_step": 3}
    # The loss and every term are returned as tensors, for FiniteWatch's check on the device.
    out = returned[-1]
    assert isinstance(out["loss"], torch.Tensor) and out["loss"].requires_grad
    assert {"lsh", "mi", "gch_acc", "objective"} <= set(out["terms"])
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out["terms"].values())


def _prepared(module, n=4, step=0):
    """The inputs of the compiled region for one step: the prepared batch and the prior samples."""
    module._step_gen = step_generator(0, step, 0, "cpu")
    x = torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(step))
    x_hat = module.deform(x)
    u = module.prior_sample(n, x.device)
    module._step_gen = None
    return module.prepare(torch.cat([x, x_hat])), u


@pytest.mark.parametrize(
    "over",
    [{}, {"no_fem": True}, {"gch": "soft", "lsh": "literal"}, {"gch": "none", "gamma": 0.0}],
    ids=["default", "no-fem", "soft-literal", "lsh-only"],
)
def test_the_step_forward_traces_as_one_graph(over):
    """encoder taps -> FEM -> local discriminator -> GCH -> prior, and the logged values: one graph,
    no graph break (``explain`` only traces; no compiler is needed)."""
    torch.manual_seed(0)
    module = DRL(_config(**over))
    batch, u = _prepared(module)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(module.forward_losses)(batch, u)
    reasons = [str(b.reason).splitlines()[0] for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


def test_compile_compiles_the_whole_step_and_keeps_the_state_dict_keys():
    torch.manual_seed(0)
    plain = DRL(_config())
    torch.manual_seed(0)
    compiled = DRL(_config(compile=True))
    compiled.configure_model()  # what Lightning calls; torch.compile itself is lazy
    assert set(compiled._compiled) == {"encode", "losses"}
    assert compiled.compiled("losses", compiled.forward_losses) is compiled._compiled["losses"]
    assert list(compiled.state_dict()) == list(plain.state_dict())
    plain.configure_model()
    assert plain.compiled("losses", plain.forward_losses) == plain.forward_losses


def test_the_step_draws_deformation_shift_and_prior_in_that_order_from_the_step_generator(
    monkeypatch,
):
    """The draws happen before the compiled region, in the order the step always made them, so a
    seed gives the same numbers as before the split."""
    seen = {}
    adversarial_losses = drl_module.adversarial_losses

    def spy(discriminator, real, fake, penalty=0.0):
        seen["u"] = real
        return adversarial_losses(discriminator, real, fake, penalty)

    monkeypatch.setattr(drl_module, "adversarial_losses", spy)
    module = DRL(_config(resample_original=True))
    x = torch.rand(4, 3, 64, 64)
    module._step_gen = step_generator(0, 5, 0, "cpu")
    module.pretext_step(x)
    module._step_gen = step_generator(0, 5, 0, "cpu")
    module.deform(x)
    module.resample(x)
    expected = torch.rand((4, module.prior_d.in_features), generator=module.generator)
    assert torch.equal(seen["u"], expected)


def test_forward_losses_is_the_step_from_the_prepared_batch():
    torch.manual_seed(0)
    module = DRL(_config())
    x = torch.rand(4, 3, 64, 64)
    module._step_gen = step_generator(0, 1, 0, "cpu")
    loss, logs = module.pretext_step(x)
    module._step_gen = step_generator(0, 1, 0, "cpu")
    batch = module.prepare(torch.cat([x, module.deform(x)]))
    again, logs_again, g_hat = module.forward_losses(batch, module.prior_sample(4, x.device))
    assert torch.equal(loss, again)
    assert logs.keys() == logs_again.keys()
    assert g_hat.shape == (4, module.fem.out_channels) and not g_hat.requires_grad


def test_heads_are_channels_last_and_a_state_dict_loads_unchanged():
    torch.manual_seed(0)
    module = DRL(_config())
    cl = torch.channels_last
    for head in (module.fem, module.local_d):
        convs = [p for p in head.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=cl) for p in convs)
    # A state dict in the default layout (an older checkpoint) loads, values equal, layout kept.
    state = {k: v.contiguous() for k, v in module.state_dict().items()}
    other = DRL(_config())
    other.load_state_dict(state)
    assert list(other.state_dict()) == list(state)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), state.values()))
    assert other.fem.branches[0].weight.is_contiguous(memory_format=cl)
