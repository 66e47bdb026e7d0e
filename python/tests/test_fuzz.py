"""Hostile inputs from Python, generated: whatever a config dict, a layout or a reply holds,
peloton answers with its result or a one-line peloton.Error — never another exception, never a
crash of the interpreter."""

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import peloton  # noqa: E402

KEYS = ["workers", "steps", "seed", "epochs", "time_budget", "log_every", "leader_window",
        "sync_init", "consensus", "watchdog_seconds", "algorithm", "optimizer", "transport",
        "compression", "eval", "external", "problem", "model", "checkpoint", "name", "kind",
        "lr", "tau", "lambda", "pull", "momentum", "cluster", "compute", "seconds", "nodes",
        "fraction", "rank", "every", "schedule", "graph", "group_size", "bogus"]
NAMES = [a["name"] for a in peloton.algorithms()] + ["threads", "sim", "mpi", "int8", "topk",
                                                       "quadratic", "python", "", "../x", "é"]
scalars = st.one_of(
    st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(NAMES),
    st.text(max_size=20),
    st.none(),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=20)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)


@settings(max_examples=400, deadline=None)
@given(configs)
def test_any_config_dict_is_resolved_or_refused_in_one_line(config):
    try:
        text = peloton.config_toml(config)
    except peloton.Error as e:
        assert "\n" not in str(e) and str(e)
    else:
        assert isinstance(text, str) and text


shapes = st.lists(st.lists(st.integers(min_value=-3, max_value=2**40), max_size=4), max_size=4)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(min_value=0, max_value=64))
def test_any_layout_is_taken_or_refused(shapes, length):
    seen, other = [], []

    def train(worker):
        try:
            worker.attach([(f"t{i}", s) for i, s in enumerate(shapes)],
                          np.zeros(length, dtype=np.float32))
        except peloton.Error as e:
            seen.append(str(e))
            raise
        except Exception as e:  # noqa: BLE001 - what the test is here to catch
            other.append(f"{type(e).__name__}: {e}")
            raise
        for _ in worker.steps():
            worker.grad[:] = 0.0
            worker.step(0.0)

    try:
        peloton.run(train, quiet=True, workers=1, steps=2, out=_tmp())
    except peloton.Error as e:
        assert "\n" not in str(e)
    for message in seen:
        assert "\n" not in message
    # A layout is refused by peloton, with its own message, or taken: never another exception.
    assert not other, other


def _tmp():
    import tempfile
    return tempfile.mkdtemp(prefix="peloton-fuzz-")


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(),
                 st.integers(min_value=-2**70, max_value=2**70)))
def test_any_evaluation_reply_is_taken_or_refused(accuracy):
    def train(worker):
        worker.attach([("w", (2,))], np.zeros(2, dtype=np.float32),
                      evaluate=lambda p: (0.5, accuracy))
        for _ in worker.steps():
            worker.grad[:] = 0.0
            worker.step(0.0)

    try:
        result = peloton.run(train, quiet=True, workers=1, steps=2, out=_tmp())
    except peloton.Error as e:
        assert "\n" not in str(e)
        assert accuracy is not None and not 0.0 <= float(accuracy) <= 1.0
    else:
        final = result.final_evals[0]
        assert accuracy is None or math.isclose(final["accuracy"], float(accuracy))
