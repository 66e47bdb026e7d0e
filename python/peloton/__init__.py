"""peloton from Python: a training loop of your own, trained by peloton's distributed algorithms.

Each worker runs your function ``train(worker)`` in a thread of its own. The function builds its
model, attaches it (``worker.attach``, or ``peloton.torch.wrap`` for a ``torch.nn.Module``) and
runs its loop over ``worker.steps()``; peloton runs the algorithm (LSGD, EASGD, SGP, all-reduce,
… — ``peloton.algorithms()`` lists them) around every step, on threads in real time or on a
simulated cluster in virtual time, and writes the same run folder as ``peloton train``
(``metrics.jsonl``, ``summary.json``), so ``peloton report`` reads it::

    import numpy as np, peloton

    def train(worker):
        target = np.full(8, worker.rank, dtype=np.float32)      # worker r's data
        worker.attach([("w", (8,))], np.zeros(8, dtype=np.float32))
        for _ in worker.steps():
            np.subtract(worker.params, target, out=worker.grad)  # ∇ ½‖w − target‖²
            worker.step(0.5 * float(worker.grad @ worker.grad))

    result = peloton.run(train, algorithm="lsgd", workers=4, steps=100)

The parameters and the gradient are flat float32 buffers that the algorithms work on in place:
``worker.params`` and ``worker.grad`` are NumPy views of them (no copy is ever made), and
``peloton.torch.wrap`` makes a model's tensors views of them too.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from . import _native
from ._native import Error

__all__ = ["Error", "Result", "Worker", "algorithms", "calibrate", "config_toml", "run", "train"]
__version__ = _native.__version__


def algorithms() -> list[dict[str, Any]]:
    """The registered algorithms, as ``peloton list`` shows them: each a dict with ``name``,
    ``summary``, ``asynchronous`` and ``keys`` (what its ``algorithm`` table accepts)."""
    return [
        {"name": name, "summary": summary, "asynchronous": asynchronous, "keys": list(keys)}
        for name, summary, asynchronous, keys in _native.algorithms()
    ]


def config_toml(config: Mapping[str, Any] | str | os.PathLike | None = None, **keys: Any) -> str:
    """The experiment config as TOML text, checked as ``peloton train`` checks it.

    ``config`` is a dict of the config's tables (``{"algorithm": {"name": "lsgd", "pull": 0.1}}``),
    TOML text, or a path to a ``.toml`` file. Keyword arguments go on top: plain keys
    (``workers=4``, ``steps=200``, ``seed=1``), and tables as dicts (``optimizer={"lr": 0.05}``)
    — a string for ``algorithm`` or ``transport`` names it (``algorithm="easgd"``,
    ``transport="sim"``). A config without ``[problem]`` or ``[model]`` trains a model of the
    caller's: its task is ``[external]`` (named ``python`` unless ``external={"name": ...}``).
    Raises :class:`peloton.Error` naming the first bad key or value.
    """
    table = _as_table(config)
    for key, value in keys.items():
        if key in ("algorithm", "transport") and isinstance(value, str):
            value = {"name" if key == "algorithm" else "kind": value}
        if isinstance(value, Mapping) and isinstance(table.get(key), Mapping):
            value = {**table[key], **value}
        table[key] = value
    if not any(k in table for k in ("problem", "model", "external")):
        table["external"] = {"name": "python"}
    try:
        as_json = json.dumps(table, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise Error(f"the config holds a value a config file cannot: {e}") from None
    return _native.resolve_config(_native.config_from_json(as_json))


def _as_table(config: Mapping[str, Any] | str | os.PathLike | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        try:  # a deep copy that also refuses what JSON (and so TOML) cannot hold
            return json.loads(json.dumps(config, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise Error(f"the config holds a value a config file cannot: {e}") from None
    if isinstance(config, os.PathLike) or (isinstance(config, str) and config.endswith(".toml")):
        try:
            config = Path(config).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise Error(f"cannot read config file {config}: {e}") from None
    if not isinstance(config, str):
        raise Error(f"a config is a dict, TOML text or a .toml path, not {type(config).__name__}")
    import tomllib

    try:
        return tomllib.loads(config)
    except tomllib.TOMLDecodeError as e:
        raise Error(f"the config is not valid TOML: {e}") from None


class Result:
    """A finished run: its folder, ``summary.json`` and ``metrics.jsonl``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())

    def metrics(self) -> list[dict[str, Any]]:
        """Every record of ``metrics.jsonl``: worker records and evaluations."""
        with open(self.path / "metrics.jsonl") as f:
            return [json.loads(line) for line in f if line.strip()]

    @property
    def final_evals(self) -> list[dict[str, Any]]:
        return self.summary["final_evals"]

    def __repr__(self) -> str:
        return f"peloton.Result({str(self.path)!r})"


def train(config: Mapping[str, Any] | str | os.PathLike | None = None, *, out=None,
          quiet: bool = True, **keys: Any) -> Result:
    """Runs a built-in experiment (a ``[problem]`` or ``[model]``) exactly as ``peloton train``
    does, in this process; returns its :class:`Result`."""
    text = config_toml(config, **keys)
    return Result(_native.train(text, None if out is None else str(out), quiet))


Optimizer = Callable[[float], None]
Evaluate = Callable[[np.ndarray], "tuple[float, float | None] | float"]


class Worker:
    """One worker's end of a run, handed to ``train(worker)``.

    ``rank`` and ``workers`` say where it stands, ``seed`` is the run's seed. After
    :meth:`attach`, ``params`` and ``grad`` are float32 NumPy views of the flat buffers the
    algorithm mixes: the loop reads the parameters from ``params`` and writes each step's
    gradient into ``grad``.
    """

    def __init__(self, native: _native.Worker):
        self._w = native
        self.rank: int = native.rank
        self.workers: int = native.workers
        self.seed: int = native.seed
        self.params: np.ndarray | None = None
        self.grad: np.ndarray | None = None
        self.state: np.ndarray | None = None
        self._eval_params: np.ndarray | None = None
        self._optimizer: Optimizer | None = None
        self._clear_optimizer: Callable[[], None] | None = None
        self._evaluate: Evaluate | None = None
        self._before_reply: list[Callable[[], None]] = []
        self._mirror = None
        self._save_state: Callable[[], bytes] | None = None
        self._load_state: Callable[[bytes], None] | None = None
        self._waiting = False  # a gradient request is out: the loop owes worker.step(loss)
        self._next: int | str | None = None  # the runner's next gradient request, once known
        self._yielded_at = 0.0
        # When `calibrate` times the loop: seconds from each step's start (its yield) to its
        # loss (`step`), the loop's compute. None otherwise: a run keeps nothing per step.
        self._compute_seconds: list[float] | None = None

    def attach(self, layout: Sequence[tuple[str, Sequence[int]]], initial: np.ndarray, *,
               optimizer: Optimizer | None = None,
               clear_optimizer: Callable[[], None] | None = None,
               evaluate: Evaluate | None = None,
               steps_per_epoch: int | None = None,
               state: np.ndarray | None = None,
               mirror: "tuple[Callable[[bool, bool, bool], None], Callable[[bool, bool, bool], None], Callable[[], bool]] | None" = None,
               save_state: Callable[[], bytes] | None = None,
               load_state: Callable[[bytes], None] | None = None) -> None:
        """Gives peloton the model.

        * ``layout``: the parameter tensors' ``(name, shape)`` in the flat order (matrices are
          what PowerSGD compresses);
        * ``initial``: the initial parameters (worker 0's are broadcast to every worker);
        * ``optimizer(lr)``: steps the loop's own optimizer on ``params`` with ``grad``;
          ``None``: peloton's ``[optimizer]`` steps them;
        * ``clear_optimizer()``: forgets its momentum (a diverged worker reset to the leader);
        * ``evaluate(params) -> (loss, accuracy)``: a model's test loss and accuracy (accuracy
          ``None`` where there is none); ``params`` is ``worker.params`` or another model
          (the workers' average, the leader's);
        * ``steps_per_epoch``: steps in one pass over this worker's data (for ``epochs``);
        * ``state``: the initial values of model state the workers average before every
          evaluation (BatchNorm running statistics); ``worker.state`` is then its buffer.
        * ``mirror``: for a model that keeps memory of its own (a GPU's), which ``params``,
          ``grad`` and ``state`` then mirror: ``(to_host, from_host, finite_grad)``.
          ``to_host(params, grad, state)`` copies the model's buffers named by the flags into
          peloton's, ``from_host(...)`` loads peloton's into the model; peloton asks only where
          it uses them. ``finite_grad()`` says whether the model's gradient is finite (peloton
          sees it only when copied). ``None``: the model's tensors are views of the buffers.
        * ``save_state() -> bytes`` and ``load_state(bytes)``: the loop's own state for
          checkpoints (``checkpoint={"every": N}``) and ``peloton.run(..., resume=...)`` —
          its optimizer's momentum, its data position — whatever it needs besides ``params``
          (which peloton saves) to go on exactly. A loop without them saves nothing: its
          batches must follow from the step index :meth:`steps` yields, which a resumed run
          continues.
        """
        try:
            names = [str(name) for name, _ in layout]
            shapes = [[int(d) for d in shape] for _, shape in layout]
        except (TypeError, ValueError) as e:
            raise Error(f"attach: the layout is a list of (name, shape) pairs: {e}") from None
        for name, shape in zip(names, shapes):
            if any(d < 0 for d in shape):
                raise Error(f"attach: tensor {name} has a negative dimension: {shape}")
        try:
            initial = np.ascontiguousarray(initial, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as e:
            raise Error(f"attach: the initial parameters must be float32 numbers: {e}") from None
        if state is not None:
            try:
                state = np.ascontiguousarray(state, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError) as e:
                raise Error(f"attach: the model state must be float32 numbers: {e}") from None
        if mirror is not None:
            try:
                to_host, from_host, finite_grad = mirror
            except (TypeError, ValueError):
                raise Error("attach: mirror is (to_host, from_host, finite_grad)") from None
            if not all(callable(f) for f in mirror):
                raise Error("attach: mirror is (to_host, from_host, finite_grad), three functions")
        self._w.attach(names, shapes, initial, optimizer is not None, steps_per_epoch, state,
                       mirror is not None)
        self._mirror = mirror
        self._save_state = save_state
        self._load_state = load_state
        self.params = np.asarray(self._w.params)
        self.state = np.asarray(self._w.state)
        self.grad = np.asarray(self._w.grad)
        self._eval_params = np.asarray(self._w.eval_params)
        self._optimizer = optimizer
        self._clear_optimizer = clear_optimizer
        self._evaluate = evaluate

    def steps(self) -> Iterator[int]:
        """The training loop's steps: yields each time peloton wants a gradient (the index of
        the request, from 0) until the run's budget is spent. The loop answers each with
        :meth:`step`, which also serves the rest of the step (the optimizer, evaluations)."""
        if self.params is None:
            raise Error("attach the model before looping over worker.steps()")
        if self._next is None:
            self._next = self._serve()
        while self._next != "finished":
            self._waiting = True
            if self._compute_seconds is not None:
                self._yielded_at = time.perf_counter()
            yield self._next
            if self._waiting:
                raise Error(f"worker {self.rank}: call worker.step(loss) once in every step")

    def step(self, loss: float) -> None:
        """Hands this step's mini-batch loss to peloton (the gradient must be in ``grad``) and
        returns once peloton is done with the step — the gradient reduced, the optimizer
        stepped, the parameters mixed — so ``params`` may be read right after."""
        if not self._waiting:
            raise Error("worker.step(loss) answers a step of worker.steps(): none is waiting")
        for hook in self._before_reply:
            hook()
        if self._compute_seconds is not None:
            self._compute_seconds.append(time.perf_counter() - self._yielded_at)
        self._waiting = False
        # A torch or NumPy scalar: its value, without autograd's history.
        value = float(loss.item() if hasattr(loss, "item") else loss)
        if self._mirror is not None and not self._mirror[2]():
            # A gradient peloton does not see diverged: it sees a diverged loss instead.
            value = math.nan
        self._w.reply_loss(value)
        self._next = self._serve()

    def _serve(self) -> int | str:
        """Answers the runner's requests until it wants the next gradient (returns its index)
        or the run is over (returns ``"finished"``)."""
        while True:
            kind, value = self._w.next()
            if kind == "finished":
                return "finished"
            if kind == "gradient":
                return value
            if kind == "optimizer_step":
                self._optimizer(value)
                self._w.reply_done()
            elif kind == "clear_optimizer":
                if self._clear_optimizer is not None:
                    self._clear_optimizer()
                self._w.reply_done()
            elif kind == "evaluate":
                self._reply_evaluation(self.params if value else self._eval_params)
            elif kind == "save_state":
                state = b"" if self._save_state is None else self._save_state()
                if not isinstance(state, (bytes, bytearray, memoryview)):
                    raise Error(f"save_state returned {type(state).__name__}, not bytes")
                self._w.reply_state(bytes(state))
            elif kind == "load_state":
                if self._load_state is not None:
                    self._load_state(value)
                elif value:
                    raise Error("the checkpoint holds the loop's own state, but the model was "
                                "attached without load_state to restore it")
                self._w.reply_done()
            elif kind == "to_host":
                self._mirror[0](*value)
                self._w.reply_done()
            elif kind == "from_host":
                self._mirror[1](*value)
                self._w.reply_done()
            else:  # pragma: no cover - the native module's requests are the ones above
                raise Error(f"unknown request {kind!r}")

    def _reply_evaluation(self, params: np.ndarray) -> None:
        if self._evaluate is None:
            self._w.reply_evaluation(math.nan, None)
            return
        result = self._evaluate(params)
        loss, accuracy = result if isinstance(result, tuple) else (result, None)
        self._w.reply_evaluation(float(loss), None if accuracy is None else float(accuracy))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _share_cores(workers_here: int, torch_threads: int | None) -> Callable[[], None]:
    """Gives each of this process's workers its share of the cores in torch's intra-op
    threads (when torch is in use): N workers each running ops on every core's thread fight
    over them (measured: 4 workers on 2 cores, 3.4× slower than with 1 thread each). Returns
    what restores the setting."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return lambda: None
    previous = torch.get_num_threads()
    torch.set_num_threads(torch_threads or max(1, _cores() // max(1, workers_here)))
    return lambda: torch.set_num_threads(previous)


def _workers_on_this_host(session: _native.Session, ranks: int) -> int:
    """Workers sharing this host's cores: this process's, or on MPI every local rank's."""
    if session.transport() == "mpi":
        for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
    return ranks


def run(train: Callable[[Worker], None],
        config: Mapping[str, Any] | str | os.PathLike | None = None, *,
        out: str | os.PathLike | None = None, quiet: bool = False,
        torch_threads: int | None = None, resume: str | os.PathLike | None = None,
        **keys: Any) -> Result:
    """Runs ``train(worker)`` for every worker, each in a thread of its own, under the
    experiment ``config`` (see :func:`config_toml`; e.g. ``algorithm="lsgd", workers=4,
    steps=500``), and returns the finished run's :class:`Result`. The run folder is ``out``
    (default ``runs/ALGORITHM-python-TIME``); a progress bar is shown unless ``quiet``.

    With torch in use, each worker gets ``torch_threads`` intra-op threads (default: this
    host's cores shared out among the workers on it), restored when the run ends.

    A worker whose ``train`` raises ends the run: :class:`peloton.Error` is raised here with the
    run's one-line message, chained to that exception.

    ``resume=RUN_DIR`` continues an interrupted run (one with ``checkpoint={"every": N}``)
    from its last checkpoint, with that folder's ``config.toml``, as ``peloton train
    --resume`` does: every worker's model, optimizer state and step index come back (through
    ``peloton.torch.wrap``, or ``attach(save_state=, load_state=)``), so the run ends as the
    uninterrupted one would.
    """
    if resume is not None:
        if config is not None or keys or out is not None:
            raise Error("a resumed run takes its folder's config.toml: give no config, keys or out")
        try:
            text = (Path(resume) / "config.toml").read_text()
        except OSError as e:
            raise Error(f"cannot read {Path(resume) / 'config.toml'}: resume needs a run folder ({e.strerror})") from None
        session = _native.Session(text, None, quiet, str(resume))
    else:
        session = _native.Session(config_toml(config, **keys), None if out is None else str(out), quiet)
    workers = [Worker(session.worker(rank)) for rank in session.ranks()]
    restore = _share_cores(_workers_on_this_host(session, len(workers)), torch_threads)
    try:
        return _run_session(session, workers, train)
    finally:
        restore()


def _run_session(session: _native.Session, workers: list[Worker],
                 train: Callable[[Worker], None]) -> Result:
    failures: dict[int, BaseException] = {}

    def main(worker: Worker) -> None:
        try:
            train(worker)
        except BaseException as e:  # noqa: BLE001 - every failure must reach the runner
            failures[worker.rank] = e
            worker._w.leave(_one_line(e))
        else:
            worker._w.leave(None)

    threads = [threading.Thread(target=main, args=(w,), name=f"peloton-worker-{w.rank}", daemon=True)
               for w in workers]
    session.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        path = session.join()
    except Error as e:
        if failures:
            raise e from failures[min(failures)]
        raise
    return Result(path)


def calibrate(train: Callable[[Worker], None],
              config: Mapping[str, Any] | str | os.PathLike | None = None, *, steps: int = 5,
              torch_threads: int | None = None, **keys: Any) -> float:
    """Seconds one local step of ``train``'s loop takes here: the median of ``steps`` steps
    (after one warm-up) of one worker alone, without communication, as the compute model of a
    simulated run wants it (``transport={"kind": "sim", "cluster": {"compute": {"seconds":
    peloton.calibrate(train)}}}``), like the CLI's ``--calibrate``. ``config`` and ``keys``
    are the run's (their algorithm, transport and worker count are replaced)."""
    if steps < 1:
        raise Error("calibrate needs at least 1 step")
    timed: list[float] = []

    def timing(worker: Worker) -> None:
        worker._compute_seconds = timed
        train(worker)

    table = _as_table(config)
    table.update(keys)
    table.update(workers=1, steps=steps + 1, algorithm={"name": "independent"},
                 transport={"kind": "threads"}, eval={"every": 0}, log_every=steps + 1)
    table.pop("time_budget", None)
    table.pop("epochs", None)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="peloton-calibrate-") as out:
        run(timing, table, out=os.path.join(out, "run"), quiet=True, torch_threads=torch_threads)
    return statistics.median(timed[1:]) if len(timed) > 1 else timed[0]
