"""The Python API with NumPy only: runs through Python equal the CLI's, bit for bit; push-sum
conserves mass; buffers are views, never copies; bad inputs raise peloton.Error."""

import json
import math
import tempfile
import time

import numpy as np
import pytest

import peloton
from peloton import _native

QUADRATIC = {"kind": "quadratic", "dim": 20, "noise": 0.5, "batch_size": 4}
SOFTMAX = {"kind": "softmax", "classes": 3, "features": 6, "train_samples": 600,
           "test_samples": 200, "batch_size": 16}


def problem_toml(problem):
    return _native.config_from_json(json.dumps(problem))


def problem_loop(problem, seed, owns_optimizer=False):
    """A Python loop that trains worker r's learner of a built-in problem, as the CLI's does."""

    def train(worker):
        learner = _native.ProblemLearner(problem_toml(problem), worker.rank, worker.workers, seed)
        layout = learner.layout()
        initial = np.zeros(sum(int(np.prod(s)) for _, s in layout), dtype=np.float32)
        learner.init_params(initial)

        def sgd(lr):  # plain SGD, the same update as peloton's with momentum 0
            worker.params -= np.float32(lr) * worker.grad

        worker.attach(layout, initial, optimizer=sgd if owns_optimizer else None,
                      evaluate=learner.evaluate)
        for _ in worker.steps():
            worker.step(learner.loss_and_grad(worker.params, worker.grad))

    return train


def _tmp():
    return tempfile.mkdtemp(prefix="peloton-test-")


def checksums(result):
    return [w["params_checksum"] for w in result.summary["per_worker"]]


def evals(result):
    return [(e["step"], e["model"], e["loss"], e.get("accuracy")) for e in result.final_evals]


@pytest.mark.parametrize("problem", [QUADRATIC, SOFTMAX], ids=["quadratic", "softmax"])
@pytest.mark.parametrize("algorithm", ["lsgd", "all-reduce", "easgd", "sgp"])
def test_a_python_loop_equals_the_cli_run(tmp_path, problem, algorithm):
    keys = dict(workers=4, steps=60, seed=7, log_every=20, algorithm=algorithm,
                optimizer={"lr": 0.05})
    cli = peloton.train(problem=problem, out=tmp_path / "cli", **keys)
    python = peloton.run(problem_loop(problem, seed=7), out=tmp_path / "python", quiet=True,
                         **keys)
    assert checksums(python) == checksums(cli)
    assert evals(python) == evals(cli)
    cli_losses = [r["loss"] for r in cli.metrics() if "worker" in r and "loss" in r]
    python_losses = [r["loss"] for r in python.metrics() if "worker" in r and "loss" in r]
    assert python_losses == cli_losses and len(cli_losses) > 0


def test_the_loops_own_optimizer_steps_in_peloton_s_place(tmp_path):
    keys = dict(workers=3, steps=40, seed=3, algorithm="lsgd", optimizer={"lr": 0.1})
    cli = peloton.train(problem=QUADRATIC, out=tmp_path / "cli", **keys)
    own = peloton.run(problem_loop(QUADRATIC, 3, owns_optimizer=True), out=tmp_path / "own",
                      quiet=True, **keys)
    assert checksums(own) == checksums(cli)


def test_the_simulator_runs_a_python_loop_in_virtual_time(tmp_path):
    cluster = {"nodes": 2, "workers_per_node": 2, "compute": {"seconds": 0.25}}
    result = peloton.run(problem_loop(QUADRATIC, 1), out=tmp_path / "sim", quiet=True,
                         workers=4, steps=40, algorithm="lsgd",
                         transport={"kind": "sim", "cluster": cluster})
    summary = result.summary
    # 40 steps of 0.25 s each, plus communication: virtual, not the test's wall-clock time.
    assert summary["seconds"] >= 10.0
    assert (tmp_path / "sim" / "sim.json").exists()
    again = peloton.run(problem_loop(QUADRATIC, 1), out=tmp_path / "sim2", quiet=True,
                        workers=4, steps=40, algorithm="lsgd",
                        transport={"kind": "sim", "cluster": cluster})
    assert checksums(again) == checksums(result)
    assert again.summary["seconds"] == summary["seconds"]


def test_push_sum_conserves_mass_through_the_api(tmp_path):
    """SGP with zero gradients only mixes: the workers' average is the initial average and the
    push-sum weights' total stays N, so the average model at the end is the initial average."""
    dim, workers = 5, 4
    starts = [np.arange(dim, dtype=np.float32) * (r + 1) - r for r in range(workers)]
    mean = np.mean(starts, axis=0)
    finals = {}

    def train(worker):
        worker.attach([("x", (dim,))], starts[worker.rank],
                      evaluate=lambda p: (float(np.abs(p - mean).max()), None))
        for _ in worker.steps():
            worker.grad[:] = 0.0
            worker.step(0.0)
        finals[worker.rank] = worker.params.copy()

    result = peloton.run(train, out=tmp_path / "sgp", quiet=True, workers=workers, steps=30,
                         sync_init=False, algorithm="sgp")
    # The evaluated model is the workers' average: its distance to the initial mean.
    assert result.final_evals[0]["loss"] < 1e-5
    spread = max(float(np.abs(finals[r] - mean).max()) for r in range(workers))
    assert spread < 1e-3, "30 rounds of exponential-graph gossip reach consensus"


def test_buffers_are_views_never_copies():
    seen = {}

    def train(worker):
        worker.attach([("w", (3, 2))], np.ones(6, dtype=np.float32))
        native_params, native_grad = worker._w.params, worker._w.grad
        seen["params"] = (worker.params.__array_interface__["data"][0], native_params.address)
        seen["grad"] = (worker.grad.__array_interface__["data"][0], native_grad.address)
        seen["writable"] = worker.params.flags.writeable
        for _ in worker.steps():
            worker.grad[:] = worker.params  # ∇ ½‖w‖²
            worker.step(0.5 * float(worker.params @ worker.params))
            # The algorithm moved the very memory the loop holds.
            seen.setdefault("after_first_step", worker.params.copy())

    peloton.run(train, quiet=True, workers=2, steps=3, algorithm="all-reduce",
                optimizer={"lr": 0.5}, out=_tmp())
    assert seen["params"][0] == seen["params"][1]
    assert seen["grad"][0] == seen["grad"][1]
    assert seen["writable"]
    assert np.allclose(seen["after_first_step"], 0.5)


def test_a_buffer_outlives_its_run():
    kept = {}

    def train(worker):
        worker.attach([("w", (4,))], np.full(4, 2.0, dtype=np.float32))
        kept[worker.rank] = worker.params
        for _ in worker.steps():
            worker.grad[:] = 0.0
            worker.step(0.0)

    peloton.run(train, quiet=True, workers=2, steps=2, out=_tmp())
    # The run and its workers are gone; the views still hold the memory they point at.
    assert kept[0].tolist() == [2.0] * 4


def test_the_run_s_lines_reach_python_s_stdout(tmp_path, capsys):
    """A notebook shows what is written to sys.stdout, not to the process's file descriptor: the
    run's header, its progress and evaluations, and its summary are written there (and a quiet
    run writes nothing)."""
    peloton.run(problem_loop(QUADRATIC, 3), out=tmp_path / "loud", workers=2, steps=40,
                log_every=10, eval={"every": 20}, algorithm="lsgd", optimizer={"lr": 0.05})
    out = capsys.readouterr().out
    for needle in ("lsgd on python · 2 workers (threads)", "step     20/40", "eval[average]",
                   "finished 40 steps", f"run folder: {tmp_path / 'loud'}"):
        assert needle in out, out
    peloton.run(problem_loop(QUADRATIC, 3), out=tmp_path / "quiet", quiet=True, workers=2,
                steps=40, algorithm="lsgd", optimizer={"lr": 0.05})
    assert capsys.readouterr().out == ""


def test_the_algorithms_are_listed_with_their_keys():
    names = {a["name"]: a for a in peloton.algorithms()}
    assert {"lsgd", "easgd", "sgp", "all-reduce", "choco-sgd", "async-easgd"} <= names.keys()
    assert "pull" in names["lsgd"]["keys"] or "lambda" in " ".join(names["lsgd"]["keys"])
    assert names["async-easgd"]["asynchronous"]


def test_an_asynchronous_algorithm_runs_from_python(tmp_path):
    result = peloton.run(problem_loop(QUADRATIC, 2), out=tmp_path / "async", quiet=True,
                         workers=3, steps=30, algorithm="async-easgd")
    assert math.isfinite(result.final_evals[0]["loss"])


# ---- bad inputs: every one raises peloton.Error with one line, and nothing crashes --------------

BAD_CONFIGS = [
    ({"algorithm": "no-such-algorithm"}, "no-such-algorithm"),
    ({"algorithm": {"name": "lsgd", "no_such_key": 1}}, "no_such_key"),
    ({"workers": 0}, "workers"),
    ({"steps": 0}, "steps"),
    ({"workers": -1}, "workers = -1"),
    ({"optimizer": {"lr": -1.0}}, "lr"),
    ({"transport": "mpi"}, "mpi"),
    ({"transport": {"kind": "sim", "cluster": {"nodes": 0}}}, "nodes"),
    ({"external": {"name": "a/b"}}, "external.name"),
    ({"external": {"name": "x"}, "problem": QUADRATIC}, "[external]"),
    ({"checkpoint": {"every": 5}, "algorithm": "async-easgd"}, "need the simulator"),
    ({"seed": 1.5}, "seed = 1.5"),
    ({"algorithm": {"name": "lsgd", "pull": "strong"}}, "pull"),
]


@pytest.mark.parametrize("keys,needle", BAD_CONFIGS)
def test_a_bad_config_raises_one_line(keys, needle):
    def train(worker):  # never reached
        raise AssertionError("a bad config must not start")

    with pytest.raises(peloton.Error) as e:
        peloton.run(train, quiet=True, out=_tmp(), **keys)
    message = str(e.value)
    assert "\n" not in message
    assert needle in message, message


def test_a_none_value_is_refused():
    with pytest.raises(peloton.Error, match="None"):
        peloton.config_toml({"algorithm": {"name": "lsgd", "pull": None}})


def test_a_failing_loop_ends_the_run_naming_worker_and_cause(tmp_path):
    def train(worker):
        worker.attach([("w", (2,))], np.zeros(2, dtype=np.float32))
        for i in worker.steps():
            if worker.rank == 1 and i == 3:
                raise ValueError("bad batch\nsecond line")
            worker.grad[:] = 0.0
            worker.step(0.0)

    with pytest.raises(peloton.Error) as e:
        peloton.run(train, quiet=True, out=tmp_path / "r", workers=3, steps=10)
    message = str(e.value)
    assert "worker 1" in message and "ValueError: bad batch second line" in message
    assert "\n" not in message
    assert isinstance(e.value.__cause__, ValueError)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] != "ok"


def test_a_loop_that_returns_early_is_an_error():
    def train(worker):
        worker.attach([("w", (2,))], np.zeros(2, dtype=np.float32))
        for i in worker.steps():
            worker.grad[:] = 0.0
            worker.step(0.0)
            if i == 4:
                return

    with pytest.raises(peloton.Error, match="returned before the run's end"):
        peloton.run(train, quiet=True, out=_tmp(), workers=2, steps=10)


def test_a_loop_that_forgets_step_is_told():
    def train(worker):
        worker.attach([("w", (2,))], np.zeros(2, dtype=np.float32))
        for _ in worker.steps():
            pass

    with pytest.raises(peloton.Error, match="worker.step"):
        peloton.run(train, quiet=True, out=_tmp(), workers=2, steps=5)


@pytest.mark.parametrize("attach,needle", [
    (lambda w: w.attach([("w", (3,))], np.zeros(2, dtype=np.float32)), "hold 2 values"),
    (lambda w: w.attach([("w", (0,))], np.zeros(0, dtype=np.float32)), "no parameters"),
    (lambda w: w.attach([("w", (1 << 40, 1 << 40))], np.zeros(1, dtype=np.float32)), "larger"),
    (lambda w: w.attach([("w", (2,))], "not an array"), "float32"),
    (lambda w: w.attach([("w", (-2,))], np.zeros(2, dtype=np.float32)), "negative dimension"),
    (lambda w: w.attach([("w", ("two",))], np.zeros(2, dtype=np.float32)), "(name, shape)"),
    (lambda w: w.attach([3], np.zeros(2, dtype=np.float32)), "(name, shape)"),
    (lambda w: (w.attach([("w", (2,))], np.zeros(2, dtype=np.float32)),
                w.attach([("w", (2,))], np.zeros(2, dtype=np.float32))), "already"),
    (lambda w: w.step(1.0), "none is waiting"),
    (lambda w: list(w.steps()), "attach"),
    (lambda w: w._w.reply_loss(1.0), "no request"),
    (lambda w: (w.attach([("w", (2,))], np.zeros(2, dtype=np.float32)),
                w._w.reply_evaluation(1.0, 2.0)), "fraction"),
])
def test_misuse_of_a_worker_raises(attach, needle):
    caught = {}

    def train(worker):
        try:
            attach(worker)
        except peloton.Error as e:
            caught[worker.rank] = str(e)
        raise RuntimeError("stop here")

    with pytest.raises(peloton.Error):
        peloton.run(train, quiet=True, out=_tmp(), workers=1, steps=2)
    assert needle in caught.get(0, ""), caught


def test_a_problem_learner_refuses_bad_buffers():
    learner = _native.ProblemLearner(problem_toml(QUADRATIC), 0, 2, 0)
    with pytest.raises(peloton.Error, match="expected 20"):
        learner.loss_and_grad(np.zeros(3, dtype=np.float32), np.zeros(3, dtype=np.float32))
    with pytest.raises(peloton.Error, match="float32"):
        learner.evaluate(np.zeros(20, dtype=np.float64))
    with pytest.raises(peloton.Error, match="read-only"):
        params = np.zeros(20, dtype=np.float32)
        grad = np.zeros(20, dtype=np.float32)
        grad.flags.writeable = False
        learner.loss_and_grad(params, grad)
    with pytest.raises(peloton.Error, match="rank 5"):
        _native.ProblemLearner(problem_toml(QUADRATIC), 5, 2, 0)


def test_calibrate_times_the_loop_for_the_simulator(tmp_path):
    def train(worker):
        worker.attach([("w", (2,))], np.zeros(2, dtype=np.float32))
        for _ in worker.steps():
            time.sleep(0.02)  # the loop's compute
            worker.grad[:] = 0.0
            worker.step(0.0)

    seconds = peloton.calibrate(train, steps=4, workers=8, algorithm="lsgd")
    assert 0.02 <= seconds < 0.2
    cluster = {"compute": {"seconds": seconds}}
    result = peloton.run(train, out=tmp_path / "sim", quiet=True, workers=2, steps=10,
                         transport={"kind": "sim", "cluster": cluster})
    assert result.summary["seconds"] >= 10 * seconds
