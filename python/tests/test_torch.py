"""peloton.torch: a plain PyTorch loop on 4 thread-workers converges; the model's tensors are
the flat buffers; zero_grad in either form keeps the gradient where peloton reads it."""

import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import peloton  # noqa: E402
import peloton.torch  # noqa: E402

GENERATOR = torch.Generator().manual_seed(0)
IMAGES = torch.randn(1536, 1, 8, 8, generator=GENERATOR)
# The label is whether the top half of the image is brighter than the bottom half.
LABELS = (IMAGES[:, 0, :4].sum((1, 2)) > IMAGES[:, 0, 4:].sum((1, 2))).long()
TEST = slice(0, 512)


def small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 2))


def held_out(model):
    device = next(model.parameters()).device
    out = model(IMAGES[TEST].to(device))
    labels = LABELS[TEST].to(device)
    return (F.cross_entropy(out, labels).item(), (out.argmax(1) == labels).float().mean().item())


def wrapped_cnn(worker, mirror, device):
    """The worker's small CNN on ``device`` and its SGD with momentum, wrapped."""
    with peloton.torch.seeded(worker):
        model = small_cnn().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    peloton.torch.wrap(worker, model, opt, evaluate=held_out, mirror=mirror)
    return model, opt


def cnn_loop(zero_grad="optimizer", record=None, mirror=None, copies=None, device="cpu"):
    images, labels = IMAGES.to(device), LABELS.to(device)

    def train(worker):
        model, opt = wrapped_cnn(worker, mirror, device)
        if copies is not None:
            count_copies(worker, copies)
        batches = torch.Generator().manual_seed(100 + worker.rank)
        for _ in worker.steps():
            i = torch.randint(512, 1536, (32,), generator=batches).to(device)
            loss = F.cross_entropy(model(images[i]), labels[i])
            if zero_grad == "optimizer":
                opt.zero_grad()
            else:
                model.zero_grad(set_to_none=True)  # backward then allocates new gradients
            loss.backward()
            worker.step(loss)
        if record is not None:
            record[worker.rank] = (model, worker)

    return train


def count_copies(worker, copies):
    """Counts the mirrored model's copies of this worker by direction and buffer."""
    to_host, from_host, finite = worker._mirror
    mine = copies.setdefault(worker.rank, {})

    def counted(direction, copy):
        def run(p, g, s):
            for name, flag in (("params", p), ("grad", g), ("state", s)):
                if flag:
                    mine[(direction, name)] = mine.get((direction, name), 0) + 1
            copy(p, g, s)
        return run

    worker._mirror = (counted("to_host", to_host), counted("from_host", from_host), finite)


@pytest.mark.parametrize("algorithm", ["lsgd", "all-reduce", "easgd", "sgp", "d-psgd", "local-sgd"])
def test_a_mirrored_model_gives_the_same_run_as_one_in_the_buffers(tmp_path, algorithm):
    """A model that keeps its own memory (on a GPU; here on the CPU, mirror=True) is copied to
    peloton's buffers only where the algorithm uses them, and the run is the same bit for bit:
    parameters, BatchNorm statistics averaged for the evaluations, the evaluations."""
    runs = {}
    for mirror in (False, True):
        runs[mirror] = peloton.run(cnn_loop(mirror=mirror), quiet=True, out=tmp_path / str(mirror),
                                   workers=3, steps=24, algorithm=algorithm,
                                   optimizer={"lr": 0.05}, eval={"every": 12})
    plain, mirrored = (
        ([w["params_checksum"] for w in r.summary["per_worker"]],
         [(e["step"], e["loss"], e["accuracy"]) for e in r.metrics() if "accuracy" in e])
        for r in (runs[False], runs[True]))
    assert plain == mirrored


def test_a_mirrored_model_is_copied_only_where_the_algorithm_communicates(tmp_path):
    """LSGD with τ = 4 over 24 steps: 6 rounds copy the model out and back in, and nothing else
    crosses between them (no gradient ever); all-reduce SGD moves the gradient every step."""
    copies = {}
    peloton.run(cnn_loop(mirror=True, copies=copies), quiet=True, out=tmp_path / "lsgd",
                workers=2, steps=24, algorithm={"name": "lsgd", "tau": 4},
                optimizer={"lr": 0.05}, eval={"every": 0}, log_every=24, consensus=False)
    for counts in copies.values():
        # Out: the 6 rounds; the last one (step 24) is the final log point too. In: the initial
        # (broadcast) model and the 5 rounds before step 24's.
        assert counts[("to_host", "params")] == 6, counts
        assert counts[("from_host", "params")] == 1 + 5, counts
        assert ("to_host", "grad") not in counts and ("from_host", "grad") not in counts, counts
    copies = {}
    peloton.run(cnn_loop(mirror=True, copies=copies), quiet=True, out=tmp_path / "ar",
                workers=2, steps=24, algorithm="all-reduce", optimizer={"lr": 0.05},
                eval={"every": 0}, log_every=24, consensus=False)
    for counts in copies.values():
        assert counts[("to_host", "grad")] == 24 and counts[("from_host", "grad")] == 24, counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_a_cuda_model_trains_with_lsgd_on_four_thread_workers(tmp_path):
    """A model on the GPU stays there: peloton mirrors it (the default for a CUDA model), copies
    at LSGD's rounds, and the run converges as the CPU one does."""
    record, copies = {}, {}
    result = peloton.run(cnn_loop(record=record, copies=copies, device="cuda"), quiet=True,
                         out=tmp_path / "r", workers=4, steps=150, algorithm="lsgd",
                         optimizer={"lr": 0.05}, eval={"every": 50})
    assert result.final_evals[0]["accuracy"] >= 0.9, result.final_evals
    for model, worker in record.values():
        assert all(p.is_cuda and p.grad.is_cuda for p in model.parameters())
        assert worker._mirror is not None
    # τ = 4 (LSGD's default): 37 rounds in 150 steps, plus the evaluations' reads.
    assert all(c[("to_host", "params")] < 60 for c in copies.values()), copies


def test_wrap_refuses_a_gpu_model_as_views():
    """A model on another device cannot be a view of host memory: mirror=False is refused."""
    caught = []

    def train(worker):
        model = nn.Linear(2, 1).to("meta")
        try:
            peloton.torch.wrap(worker, model, mirror=False)
        except peloton.Error as e:
            caught.append(str(e))
        raise RuntimeError("stop")

    with pytest.raises(peloton.Error):
        peloton.run(train, quiet=True, out=tempfile.mkdtemp(), workers=1, steps=1)
    assert "mirror" in caught[0] and "meta" in caught[0], caught


def resumable_loop(fail_at=None, mirror=None, device="cpu"):
    """The small CNN with momentum and BatchNorm; each step's batch follows from the step index
    (so a resumed run draws the same ones), and the loop raises at step ``fail_at``."""
    images, labels = IMAGES.to(device), LABELS.to(device)

    def train(worker):
        model, opt = wrapped_cnn(worker, mirror, device)
        for step in worker.steps():
            if step == fail_at:
                raise RuntimeError("killed")
            g = torch.Generator().manual_seed(1000 * worker.rank + step)
            i = torch.randint(512, 1536, (32,), generator=g).to(device)
            loss = F.cross_entropy(model(images[i]), labels[i])
            opt.zero_grad()
            loss.backward()
            worker.step(loss)

    return train


RESUMABLE = dict(workers=2, steps=30, algorithm={"name": "lsgd", "tau": 4},
                 optimizer={"lr": 0.05}, eval={"every": 10}, checkpoint={"every": 10})


def outcome(result):
    return ([w["params_checksum"] for w in result.summary["per_worker"]],
            [(e["step"], e["loss"], e["accuracy"]) for e in result.metrics() if "accuracy" in e])


@pytest.mark.parametrize("mirror", [False, True])
def test_a_killed_run_resumes_to_the_uninterrupted_one(tmp_path, mirror):
    """A run whose loop dies at step 17 resumes from its checkpoint of step 10 and ends as the
    uninterrupted run, bit for bit: the parameters (peloton's), the optimizer's momentum and the
    BatchNorm statistics (the loop's state, saved through wrap), the step index."""
    whole = peloton.run(resumable_loop(mirror=mirror), quiet=True, out=tmp_path / "whole",
                        **RESUMABLE)
    with pytest.raises(peloton.Error, match="killed"):
        peloton.run(resumable_loop(fail_at=17, mirror=mirror), quiet=True,
                    out=tmp_path / "killed", **RESUMABLE)
    resumed = peloton.run(resumable_loop(mirror=mirror), quiet=True, resume=tmp_path / "killed")
    assert outcome(resumed) == outcome(whole)


def test_a_resume_without_the_optimizer_s_state_ends_elsewhere(tmp_path, monkeypatch):
    """The test above can fail: a loop that loses its momentum on the resume ends elsewhere."""
    whole = peloton.run(resumable_loop(), quiet=True, out=tmp_path / "whole", **RESUMABLE)
    with pytest.raises(peloton.Error):
        peloton.run(resumable_loop(fail_at=17), quiet=True, out=tmp_path / "killed", **RESUMABLE)
    monkeypatch.setattr(torch.optim.SGD, "load_state_dict", lambda self, state: None)
    resumed = peloton.run(resumable_loop(), quiet=True, resume=tmp_path / "killed")
    assert outcome(resumed)[0] != outcome(whole)[0]


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    with pytest.raises(peloton.Error, match="config.toml"):
        peloton.run(resumable_loop(), quiet=True, resume=tmp_path / "nothing")
    done = peloton.run(resumable_loop(), quiet=True, out=tmp_path / "done", **RESUMABLE)
    with pytest.raises(peloton.Error, match="finished already"):
        peloton.run(resumable_loop(), quiet=True, resume=done.path)
    with pytest.raises(peloton.Error, match="config"):
        peloton.run(resumable_loop(), {"workers": 2}, quiet=True, resume=done.path)


def test_a_diverged_gradient_on_the_device_is_caught(tmp_path):
    """peloton sees a mirrored model's gradient only when it copies it: a gradient that is not
    finite is reported as a diverged loss, so the run stops naming the worker."""
    def train(worker):
        model = nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        peloton.torch.wrap(worker, model, opt, mirror=True)
        for step in worker.steps():
            opt.zero_grad()
            loss = model(torch.ones(4, 2)).sum()
            loss.backward()
            if step == 3 and worker.rank == 1:
                model.weight.grad[0, 0] = float("inf")
            worker.step(loss)

    with pytest.raises(peloton.Error, match="worker 1"):
        peloton.run(train, quiet=True, out=tmp_path / "r", workers=2, steps=10,
                    algorithm={"name": "lsgd", "tau": 4}, optimizer={"lr": 0.1})


def test_a_cnn_on_four_thread_workers_converges_with_lsgd():
    result = peloton.run(cnn_loop(), quiet=True, out=tempfile.mkdtemp(), workers=4, steps=150,
                         algorithm="lsgd", optimizer={"lr": 0.05}, eval={"every": 50})
    final = result.final_evals[0]
    assert final["model"] == "average"
    assert final["accuracy"] >= 0.9, final
    evals = [r for r in result.metrics() if r.get("model") == "average"]
    assert [e["step"] for e in evals] == [50, 100, 150]


def test_the_model_tensors_are_the_flat_buffers():
    record = {}
    peloton.run(cnn_loop(record=record), quiet=True, out=tempfile.mkdtemp(), workers=2,
                steps=5, algorithm="all-reduce", optimizer={"lr": 0.05})
    for rank, (model, worker) in record.items():
        base, gbase = worker._w.params.address, worker._w.grad.address
        offset = 0
        for p in model.parameters():
            assert p.data_ptr() == base + 4 * offset
            assert p.grad.data_ptr() == gbase + 4 * offset
            offset += p.numel()
        assert offset == len(worker.params)
        # BatchNorm's running statistics are views of the averaged state.
        sbase, offset = worker._w.state.address, 0
        for b in model.buffers():
            if b.dtype == torch.float32:
                assert b.data_ptr() == sbase + 4 * offset
                offset += b.numel()
        assert offset == len(worker.state) == 2 * 8
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
        assert np.array_equal(flat, worker.params)
    # All-reduce keeps the workers' models equal, bit for bit; their BatchNorm statistics were
    # averaged for the final evaluation.
    assert np.array_equal(record[0][1].params, record[1][1].params)
    assert np.array_equal(record[0][1].state, record[1][1].state)


def test_zero_grad_to_none_still_feeds_peloton_the_gradient(tmp_path):
    """model.zero_grad(set_to_none=True) makes backward allocate gradients outside the flat
    buffer: peloton copies them in, so the run equals the one with the optimizer's zero_grad."""
    a = peloton.run(cnn_loop("optimizer"), quiet=True, out=tmp_path / "a", workers=2, steps=20,
                    algorithm="all-reduce", optimizer={"lr": 0.05})
    b = peloton.run(cnn_loop("model"), quiet=True, out=tmp_path / "b", workers=2, steps=20,
                    algorithm="all-reduce", optimizer={"lr": 0.05})
    checksums = [[w["params_checksum"] for w in r.summary["per_worker"]] for r in (a, b)]
    assert checksums[0] == checksums[1]


def test_peloton_s_own_optimizer_steps_a_wrapped_model(tmp_path):
    def train(worker):
        with peloton.torch.seeded(worker):
            model = nn.Linear(4, 1)
        peloton.torch.wrap(worker, model)  # no torch optimizer: peloton's [optimizer] steps
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(worker.rank))
        y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        for _ in worker.steps():
            loss = F.mse_loss(model(x), y)
            model.zero_grad()
            loss.backward()
            worker.step(loss)

    result = peloton.run(train, quiet=True, out=tmp_path / "r", workers=3, steps=300,
                         algorithm="local-sgd", optimizer={"lr": 0.05})
    last = [r for r in result.metrics() if r.get("worker") == 0 and "loss" in r][-1]
    assert last["loss"] < 1e-3


def test_wrap_refuses_what_it_cannot_hold():
    caught = []

    def train(worker):
        try:
            peloton.torch.wrap(worker, nn.Linear(2, 2).double())
        except peloton.Error as e:
            caught.append(str(e))
        raise RuntimeError("stop")

    with pytest.raises(peloton.Error):
        peloton.run(train, quiet=True, out=tempfile.mkdtemp(), workers=1, steps=1)
    assert "float64" in caught[0]


def test_the_model_zoo_s_resnets_have_the_cli_s_parameter_counts():
    from peloton.models import resnet, resnet20

    # crates/peloton-burn's resnet.rs: ResNet-20 269,722; ResNet-56 853,018 (option-A shortcuts).
    assert sum(p.numel() for p in resnet20().parameters()) == 269_722
    assert sum(p.numel() for p in resnet(56).parameters()) == 853_018
    assert resnet20()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet(21)
