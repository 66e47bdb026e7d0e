"""peloton from Python on MPI: `mpirun -n 2 python script.py` gives the same run as two
thread-workers, bit for bit (skipped unless the wheel was built with `--features mpi` and
mpirun is on the PATH)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import peloton
from peloton import _native

pytestmark = pytest.mark.skipif(not _native.HAS_MPI or shutil.which("mpirun") is None,
                                reason="needs a wheel built with --features mpi, and mpirun")

TESTS = Path(__file__).resolve().parent

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import peloton
from test_numpy import problem_loop, QUADRATIC
peloton.run(problem_loop(QUADRATIC, 7), out={out!r}, quiet=True, steps=40, seed=7,
            log_every=10, algorithm={algorithm!r}, optimizer={{"lr": 0.05}}, transport="mpi")
"""


def mpirun(script, ranks, timeout=120):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    return subprocess.run(["mpirun", "-n", str(ranks), "--oversubscribe", sys.executable, script],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("algorithm", ["lsgd", "all-reduce", "sgp"])
def test_mpi_ranks_equal_thread_workers(tmp_path, algorithm):
    from test_numpy import QUADRATIC, problem_loop

    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(tmp_path / "mpi"), algorithm=algorithm))
    done = mpirun(script, 2)
    assert done.returncode == 0, done.stderr[-2000:]
    mpi = peloton.Result(tmp_path / "mpi")
    threads = peloton.run(problem_loop(QUADRATIC, 7), out=tmp_path / "threads", quiet=True,
                          workers=2, steps=40, seed=7, log_every=10, algorithm=algorithm,
                          optimizer={"lr": 0.05})
    assert [w["params_checksum"] for w in mpi.summary["per_worker"]] == \
        [w["params_checksum"] for w in threads.summary["per_worker"]]
    assert [(e["step"], e["loss"]) for e in mpi.final_evals] == \
        [(e["step"], e["loss"]) for e in threads.final_evals]


def test_a_script_without_mpirun_is_told_to_use_it():
    with pytest.raises(peloton.Error, match="mpirun"):
        peloton.run(lambda w: None, quiet=True, transport="mpi")


TORCH_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import peloton
from test_torch import cnn_loop
peloton.run(cnn_loop(mirror=True), out={out!r}, quiet=True, steps=16, log_every=8,
            algorithm={{"name": "lsgd", "tau": 4}}, optimizer={{"lr": 0.05}}, eval={{"every": 8}},
            transport="mpi", torch_threads=1)
"""


def test_a_mirrored_torch_model_on_mpi_ranks_equals_thread_workers(tmp_path):
    """The copies of a mirrored model (a GPU's, here the CPU's) on MPI ranks give the run of
    two thread-workers whose models are views of peloton's buffers."""
    pytest.importorskip("torch")
    from test_torch import cnn_loop

    script = tmp_path / "train.py"
    script.write_text(TORCH_SCRIPT.format(tests=str(TESTS), out=str(tmp_path / "mpi")))
    done = mpirun(script, 2, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    mpi = peloton.Result(tmp_path / "mpi")
    threads = peloton.run(cnn_loop(mirror=False), out=tmp_path / "threads", quiet=True,
                          workers=2, steps=16, log_every=8, algorithm={"name": "lsgd", "tau": 4},
                          optimizer={"lr": 0.05}, eval={"every": 8}, torch_threads=1)
    assert [w["params_checksum"] for w in mpi.summary["per_worker"]] == \
        [w["params_checksum"] for w in threads.summary["per_worker"]]
    assert [(e["step"], e["loss"], e["accuracy"]) for e in mpi.final_evals] == \
        [(e["step"], e["loss"], e["accuracy"]) for e in threads.final_evals]


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import peloton
from test_torch import RESUMABLE, resumable_loop
fail_at = {fail_at!r}
if {resume!r}:
    peloton.run(resumable_loop(), quiet=True, resume={out!r}, torch_threads=1)
else:
    peloton.run(resumable_loop(fail_at=fail_at), out={out!r}, quiet=True, transport="mpi",
                torch_threads=1, **RESUMABLE)
"""


def test_a_killed_mpi_job_resumes_to_the_uninterrupted_threads_run(tmp_path):
    """Two MPI ranks whose loops die at step 17, resumed by a second mpirun from the checkpoint
    of step 10, end as two uninterrupted thread-workers."""
    pytest.importorskip("torch")
    from test_torch import RESUMABLE, outcome, resumable_loop

    out = str(tmp_path / "mpi")
    for resume, fail_at, ok in ((False, 17, False), (True, None, True)):
        script = tmp_path / f"train-{resume}.py"
        script.write_text(RESUME_SCRIPT.format(tests=str(TESTS), out=out, fail_at=fail_at,
                                               resume=resume))
        done = mpirun(script, 2, timeout=300)
        assert (done.returncode == 0) == ok, done.stderr[-2000:]
    threads = peloton.run(resumable_loop(), out=tmp_path / "threads", quiet=True,
                          torch_threads=1, **RESUMABLE)
    assert outcome(peloton.Result(out)) == outcome(threads)
