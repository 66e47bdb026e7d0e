"""peloton.torch: a plain PyTorch loop trained by peloton's algorithms.

``wrap(worker, model, optimizer, evaluate=...)`` makes the model's parameters and gradients
views of the worker's flat buffers (one copy, at the start), so the algorithm mixes the very
tensors the model computes with. The loop stays PyTorch's own::

    def train(worker):
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        peloton.torch.wrap(worker, model, opt, evaluate=test_accuracy)
        for _ in worker.steps():
            x, y = next_batch()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            worker.step(loss)       # the algorithm's hooks around opt.step()

    peloton.run(train, algorithm="lsgd", workers=4, steps=1000)

The learning rate comes from peloton's ``[optimizer]`` (``lr`` and its schedule), so that the
algorithms (LSGD's pull, EASGD's elastic force) see the one the optimizer uses: it is written
into the optimizer's param groups before every step. The model's float buffers (BatchNorm
running statistics) are views of the worker's state buffer, which the workers average before
every evaluation, as the CLI does for its own models. A model on a GPU stays there: peloton's
buffers mirror it and are copied only where the algorithm communicates (``mirror``). Models
are float32.

torch is imported by this module only: ``import peloton`` works without it.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from typing import Any, Callable

import numpy as np
import torch

from . import Error, Worker

__all__ = ["seeded", "wrap"]

# torch's default generator is one per process: workers that seed it and draw from it at the
# same time (building their models) would interleave their draws.
_GLOBAL_RNG = threading.Lock()


@contextlib.contextmanager
def seeded(worker: Worker):
    """Seeds torch's default generator for this worker (from the run's seed and the rank) and
    holds it for the worker alone while the block runs: models built inside start the same on
    every run. Draws outside such a block (dropout, ``torch.randint``) interleave between the
    worker threads; give them a ``torch.Generator`` of their own for repeatable runs."""
    with _GLOBAL_RNG:
        state = torch.random.get_rng_state()
        torch.manual_seed((worker.seed * 1_000_003 + worker.rank) % (1 << 63))
        try:
            yield
        finally:
            torch.random.set_rng_state(state)


def wrap(worker: Worker, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         *, evaluate: Callable[[torch.nn.Module], "tuple[float, float | None] | float"] | None = None,
         steps_per_epoch: int | None = None, mirror: bool | None = None,
         loop_state: "tuple[Callable[[], Any], Callable[[Any], None]] | None" = None) -> torch.nn.Module:
    """Attaches ``model`` to ``worker`` and returns it.

    * ``optimizer``: stepped by peloton between the algorithm's hooks (``None``: peloton's own
      ``[optimizer]`` steps the flat buffer). Its ``zero_grad`` zeroes the flat gradient in place.
    * ``evaluate(model) -> (test_loss, accuracy)``: called under ``torch.no_grad()`` in eval
      mode, on the worker's own parameters or on another model peloton evaluates (the workers'
      average, the leader's), loaded into the same module.
    * ``mirror``: where the model's memory is. A CPU model (``mirror=False``, its default) has
      its parameters, gradients and BatchNorm statistics made views of ``worker.params``,
      ``worker.grad`` and ``worker.state``: no copy ever. A model on a GPU (``mirror=True``,
      the default for one) keeps them there, as views of one flat tensor per kind on the
      device, and peloton's buffers mirror them: a copy is made only where the algorithm
      communicates (LSGD's rounds every τ steps, all-reduce's gradients every step), an
      evaluation or a checkpoint reads, in one ``copy_`` per buffer. ``mirror=True`` on a CPU
      model gives the same run, copies included (the tests check it).
    * ``loop_state=(get, set)``: the rest of the loop's state for checkpoints — its data
      position, its generators (``get()`` returns tensors, numbers, strings, lists or dicts;
      ``set`` takes them back on a resume). The model's buffers and the optimizer's state are
      saved without it. A loop whose batches follow from the step index ``worker.steps()``
      yields needs none.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise Error("peloton.torch.wrap: the model has no trainable parameters")
    device = named[0][1].device
    for name, p in named:
        if p.device != device:
            raise Error(f"peloton.torch.wrap: parameter {name} is on {p.device}, "
                        f"{named[0][0]} on {device}; the model must be on one device")
        if p.dtype != torch.float32:
            raise Error(f"peloton.torch.wrap: parameter {name} is {p.dtype}; peloton's buffers are float32")
    if mirror is None:
        mirror = device.type != "cpu"
    elif not mirror and device.type != "cpu":
        raise Error(f"peloton.torch.wrap: the model is on {device}, whose memory cannot be a view "
                    "of peloton's buffers: leave mirror to its default (True)")
    params = [p for _, p in named]
    if optimizer is not None:
        wrapped = {id(p) for p in params}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in wrapped:
                    raise Error("peloton.torch.wrap: the optimizer steps a tensor that is not a trainable parameter of the model")

    # Float buffers (BatchNorm's running statistics) are the state averaged before evaluations.
    buffers = [b for b in model.buffers() if b.dtype == torch.float32 and b.device == device]
    with torch.no_grad():
        flat_params = torch.cat([p.detach().reshape(-1) for p in params])
        flat_state = torch.cat([b.detach().reshape(-1) for b in buffers]) if buffers else None
    layout = [(name, tuple(p.shape)) for name, p in named]
    flat_views = _Views(params)
    state_views = _Views(buffers) if buffers else None

    def on_host(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu").numpy()

    def evaluate_params(flat) -> "tuple[float, float | None] | float":
        if evaluate is None:
            return float("nan"), None
        own = flat is worker.params
        if not own:
            other = torch.from_numpy(flat)
            if mirror:
                eval_flat.copy_(other)
                other = eval_flat
            flat_views.point(params, other)
        training = model.training
        try:
            model.eval()
            with torch.no_grad():
                return evaluate(model)
        finally:
            model.train(training)
            if not own:
                flat_views.point(params, flat_views.params)

    step = clear = None
    if optimizer is not None:
        warned = []

        def step(lr: float) -> None:
            for group in optimizer.param_groups:
                # peloton's lr is float32: equal to 7 digits is the same rate.
                if not warned and abs(group["lr"] - lr) > 1e-6 * max(1e-12, abs(lr)):
                    warned.append(True)
                    warnings.warn(
                        f"peloton.torch: the optimizer's lr {group['lr']} is replaced by peloton's "
                        f"{lr} (set it in peloton's optimizer config, e.g. optimizer={{'lr': ...}})",
                        stacklevel=2)
                group["lr"] = lr
            optimizer.step()

        def clear() -> None:
            optimizer.state.clear()

    copies = None
    if mirror:
        def to_host(p: bool, g: bool, s: bool) -> None:
            with torch.no_grad():
                if p:
                    host_params.copy_(flat_views.params)
                if g:
                    host_grad.copy_(flat_views.grad)
                if s and state_views is not None:
                    host_state.copy_(state_views.params)

        def from_host(p: bool, g: bool, s: bool) -> None:
            with torch.no_grad():
                if p:
                    flat_views.params.copy_(host_params)
                if g:
                    flat_views.grad.copy_(host_grad)
                if s and state_views is not None:
                    state_views.params.copy_(host_state)

        def finite_grad() -> bool:
            # The runner checks the gradient it sees; this one stays on the device.
            return bool(torch.isfinite(flat_views.grad).all())

        copies = (to_host, from_host, finite_grad)

    def save_state() -> bytes:
        saved = {"buffers": {name: b.detach().to("cpu") for name, b in model.named_buffers()},
                 "optimizer": None if optimizer is None else optimizer.state_dict(),
                 "loop": None if loop_state is None else loop_state[0]()}
        out = io.BytesIO()
        torch.save(saved, out)
        return out.getvalue()

    def load_state(data: bytes) -> None:
        try:
            # Tensors and plain containers only: a checkpoint file cannot run code.
            saved = torch.load(io.BytesIO(data), weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several kinds here
            raise Error(f"peloton.torch: the checkpoint's loop state does not load: {_first_line(e)}") from None
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name not in saved["buffers"]:
                    raise Error(f"peloton.torch: the checkpoint has no buffer {name}: another model")
                b.copy_(saved["buffers"][name])  # in place: views stay views
        if optimizer is not None and saved["optimizer"] is not None:
            optimizer.load_state_dict(saved["optimizer"])
        if loop_state is not None:
            loop_state[1](saved["loop"])

    worker.attach(layout, on_host(flat_params), optimizer=step, clear_optimizer=clear,
                  evaluate=evaluate_params, steps_per_epoch=steps_per_epoch,
                  state=None if flat_state is None else on_host(flat_state), mirror=copies,
                  save_state=save_state, load_state=load_state)
    host_params = torch.from_numpy(worker.params)
    host_grad = torch.from_numpy(worker.grad)
    host_state = torch.from_numpy(worker.state)
    if mirror:
        # The model's own flat tensors on its device; peloton's buffers mirror them.
        flat_views.params = flat_params
        flat_views.grad = torch.zeros_like(flat_params)
        eval_flat = torch.empty_like(flat_params)
        if state_views is not None:
            state_views.params = flat_state
    else:
        flat_views.params = host_params
        flat_views.grad = host_grad
        if state_views is not None:
            state_views.params = host_state
    if state_views is not None:
        state_views.point(buffers, state_views.params)
    flat_views.point(params, flat_views.params)
    flat_views.point_grads(params)
    # A `.grad` set to None (zero_grad(set_to_none=True)) is reallocated by backward outside the
    # flat buffer: copy it back in and point it at its view again, before peloton reads `grad`.
    worker._before_reply.append(lambda: flat_views.regather_grads(params))
    if optimizer is not None:
        def zero_grad(set_to_none: bool = True) -> None:
            # Gradients that left the buffer are brought back before peloton reads them.
            flat_views.grad.zero_()
        optimizer.zero_grad = zero_grad
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


class _Views:
    """Where each parameter sits in the flat buffers, and how to point tensors there."""

    def __init__(self, params: list[torch.Tensor]):
        self.shapes = [p.shape for p in params]
        self.offsets = []
        offset = 0
        for p in params:
            self.offsets.append(offset)
            offset += p.numel()
        self.params: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None
        self.grad_views: list[torch.Tensor] = []

    def slices(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[o:o + s.numel()].view(s) for o, s in zip(self.offsets, self.shapes)]

    def point(self, params: list[torch.Tensor], flat: torch.Tensor) -> None:
        for p, view in zip(params, self.slices(flat)):
            p.data = view

    def point_grads(self, params: list[torch.Tensor]) -> None:
        if not self.grad_views:
            self.grad_views = self.slices(self.grad)
        for p, view in zip(params, self.grad_views):
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view

    def regather_grads(self, params: list[torch.Tensor]) -> None:
        for p, view in zip(params, self.grad_views):
            g = p.grad
            if g is None:
                view.zero_()  # a parameter the loss did not reach
                p.grad = view
            elif g.data_ptr() != view.data_ptr():
                view.copy_(g)
                p.grad = view
