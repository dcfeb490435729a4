"""Data-parallel runs: two gloo ranks on the CPU agree with each other and with one process.

The two-rank run and the single-process run see the same global batches
(the single process gets, per step, the union of what the two ranks'
DistributedSamplers hand out), so they differ only in float32 rounding:
DDP averages two per-rank mean gradients where one process takes the mean
over the whole batch. Three LC steps of SGD keep that difference below
TOLERANCE (measured: at most 1.2e-7); the ranks themselves agree exactly.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import lcpress
from lcpress.runs import distributed

WORLD = 2
PER_RANK_BATCH = 8
# Every rank of these tests is on this machine: gloo talks over loopback, so
# neither a hostname that does not resolve nor a sandbox's odd interfaces matter.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
PROBE = textwrap.dedent("""
    import datetime, sys, torch, torch.distributed as dist
    def rank(r, path):  # the collectives lcpress uses: all_reduce, broadcast of sizes and bytes, barrier
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method="file://" + path, rank=r, world_size=2,
                                timeout=datetime.timedelta(seconds=60))
        t = torch.ones(1)
        dist.all_reduce(t)
        size = torch.tensor([5 if r == 0 else 0], dtype=torch.int64)
        dist.broadcast(size, src=0)
        data = torch.arange(5, dtype=torch.uint8) if r == 0 else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(data, src=0)
        dist.barrier()
        assert float(t) == 2.0 and data.tolist() == [0, 1, 2, 3, 4]
        dist.destroy_process_group()
    if __name__ == "__main__":
        torch.multiprocessing.spawn(rank, args=(sys.argv[1],), nprocs=2, join=True)
""")
TOLERANCE = 1e-5  # largest |difference| of any weight, two ranks vs one process (see the module docstring)
CONFIG = {
    "tasks": [{"layers": ["0", "2"], "options": {"rank_multiple": 4}, "target": {"cost": "flops", "ratio": 0.5}}],
    "schedule": {"mu0": 1e-2, "factor": 2.0, "steps": 3},
    "train": {"epochs": 2, "lr": 0.05, "lr_decay": 0.9, "optimizer": "sgd", "momentum": 0.9},
    "seed": 5,
}


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 12, generator=g)  # 60 is not a multiple of the global batch: the last batches are short
    return TensorDataset(x, (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4] > 0).long())


def model() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def eval_loader() -> DataLoader:
    return DataLoader(dataset(), batch_size=32)


class GlobalBatches:
    """Batches of one process that equal the union of the ranks' DistributedSampler batches, epoch by epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self):
        shards = []
        for r in range(WORLD):
            sampler = DistributedSampler(range(self.n), num_replicas=WORLD, rank=r, shuffle=True, seed=self.seed)
            sampler.set_epoch(self.epoch)
            shards.append(list(sampler))
        self.epoch += 1
        for start in range(0, len(shards[0]), PER_RANK_BATCH):
            yield [i for shard in shards for i in shard[start:start + PER_RANK_BATCH]]

    def __len__(self) -> int:
        return -(-len(range(0, self.n, WORLD)) // PER_RANK_BATCH)


class Interrupt(Exception):
    pass


def _refuse_writes(rank: int, monkeypatch_like) -> None:
    """On ranks other than 0, any file lcpress writes is an error."""
    import os as os_mod

    import pandas as pd

    def refuse(*args, **kwargs):
        raise AssertionError(f"rank {rank} wrote {args[:2]}")

    monkeypatch_like(os_mod, "replace", refuse)
    monkeypatch_like(pd.DataFrame, "to_csv", refuse)


def _worker(rank: int, init_file: str, out: str) -> None:
    """One rank: a full run, an interrupted run, its resumption; results saved per rank."""
    import torch.distributed as dist

    from lcpress.runs.training import SupervisedTrainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=300))  # a rank that waits for a dead one gives up
    patches = []

    def patch(obj, name, value):
        patches.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    try:
        if rank != 0:
            _refuse_writes(rank, patch)

        def run(name: str, resume: bool = False):
            train = DataLoader(dataset(), batch_size=PER_RANK_BATCH, shuffle=True)
            config = dict(CONFIG, output_dir=str(Path(out) / name))
            return lcpress.compress(model(), config, loaders=(train, eval_loader()), resume=resume, progress=False)

        full = run("full")
        try:  # rank 0 refuses (the run is finished); rank 1 must hear of it rather than wait
            run("full", resume=True)
        except lcpress.LcpressError as exc:
            expected = "holds a finished run" if rank == 0 else "rank 0 failed: RunDirectoryError"
            assert expected in str(exc), str(exc)
        else:
            raise AssertionError("resuming a finished run was not refused")
        original = SupervisedTrainer.__call__

        def interrupted(self, m, penalty, step):
            if step.index == 2:
                raise Interrupt("power cut")
            return original(self, m, penalty, step)

        patch(SupervisedTrainer, "__call__", interrupted)
        try:
            run("cut")
        except Interrupt:
            pass
        else:
            raise AssertionError("the interrupted run ran to the end")
        setattr(SupervisedTrainer, "__call__", original)
        resumed = run("cut", resume=True)
        tensors = {f"theta/{i}/{k}": v for i, s in enumerate(full.states) for k, v in s.tensors.items()}
        tensors.update({f"model/{k}": v for k, v in full.model.state_dict().items()})
        tensors.update({f"resumed/{k}": v for k, v in resumed.model.state_dict().items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(out) / f"rank{rank}.safetensors"))
        metrics = [float(full.history["train_loss"].iloc[-1]), float(full.metric), float(resumed.metric)]
        (Path(out) / f"rank{rank}.txt").write_text(" ".join(map(repr, metrics)))
    except BaseException:
        # Written before anything else can go wrong: tearing down gloo while the
        # other rank waits in a collective may abort this process and lose the traceback.
        (Path(out) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    else:
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
        dist.destroy_process_group()
    finally:
        for obj, name, value in reversed(patches):
            setattr(obj, name, value)
    # Everything this rank had to say is on disk. Leave without running interpreter teardown, where gloo's and
    # DDP's C++ threads can abort the process ("terminate called without an active exception") on a busy machine.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    """Skip, with what gloo said, where this machine cannot form a two-rank gloo group at all.

    The probe is torch alone (no lcpress): a failure here is the machine's, and
    every test that needs ranks says so instead of failing on it.
    """
    where = tmp_path_factory.mktemp("gloo_probe")
    (where / "probe.py").write_text(PROBE)
    env = {**os.environ, **LOOPBACK, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "probe.py", str(where / "init")], cwd=where, env=env,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("a two-rank gloo group over loopback did not form within 120 s on this machine")
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        pytest.skip(f"torch cannot form a two-rank gloo group on this machine: {said}")
    return env


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, gloo):
    out = tmp_path_factory.mktemp("ddp")
    with pytest.MonkeyPatch.context() as env:
        for key, value in LOOPBACK.items():
            env.setenv(key, value)  # the spawned ranks inherit it
        try:
            torch.multiprocessing.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD, join=True)
        except Exception as exc:
            said = "\n".join(f"rank {r}:\n{(out / f'rank{r}.error').read_text()}"
                             for r in range(WORLD) if (out / f"rank{r}.error").is_file())
            pytest.fail(f"the two-rank run failed ({exc})\n{said or 'no rank left a traceback'}")
    return out


def test_ranks_hold_identical_theta_and_weights(two_ranks):
    ranks = [load_file(str(two_ranks / f"rank{r}.safetensors")) for r in range(WORLD)]
    assert ranks[0].keys() == ranks[1].keys()
    assert any(k.startswith("theta/") for k in ranks[0])
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    metrics = [(two_ranks / f"rank{r}.txt").read_text() for r in range(WORLD)]
    assert metrics[0] == metrics[1]  # loss (mean over ranks) and metric, as rank 0 reported them


def test_two_ranks_match_one_process_with_the_same_global_batch(two_ranks, tmp_path):
    ds = dataset()
    train = DataLoader(ds, batch_sampler=GlobalBatches(len(ds), CONFIG["seed"]))
    single = lcpress.compress(model(), dict(CONFIG, output_dir=str(tmp_path / "single")),
                              loaders=(train, eval_loader()), progress=False)
    ranked = load_file(str(two_ranks / "rank0.safetensors"))
    reference = single.model.state_dict()
    assert {k.removeprefix("model/") for k in ranked if k.startswith("model/")} == set(reference)
    for name, value in reference.items():  # same keys: the same ranks were chosen, so the same structure
        diff = float((ranked[f"model/{name}"] - value).abs().max())
        assert diff <= TOLERANCE, f"{name}: two ranks and one process differ by {diff:.2e}"
    for i, state in enumerate(single.states):
        for k, v in state.tensors.items():
            assert ranked[f"theta/{i}/{k}"].shape == v.shape


def test_resumed_two_rank_run_equals_the_uninterrupted_one(two_ranks):
    ranked = load_file(str(two_ranks / "rank0.safetensors"))
    for key in (k for k in ranked if k.startswith("model/")):
        assert torch.equal(ranked[key], ranked["resumed/" + key.removeprefix("model/")]), key
    for name in ("full", "cut"):
        run = two_ranks / name
        assert (run / "model.safetensors").is_file() and (run / "checkpoint.safetensors").is_file()
        assert lcpress.io.files.read_file(run / "checkpoint.safetensors")[1]["engine"]["trainer"]


def test_outside_a_process_group_the_helpers_change_nothing():
    loader = DataLoader(dataset(), batch_size=4, shuffle=True)
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.shard_loader(loader, 0) is loader
    train_fn = object()
    assert distributed.data_parallel(train_fn, model()) is train_fn
    assert distributed.on_main(lambda: 7) == 7
    assert distributed.broadcast({"a": [1, 2]}) == {"a": [1, 2]}
    assert distributed.local_device("cuda:1") == torch.device("cuda", 1)


def test_torchrun_runs_the_cli_on_two_ranks(tmp_path, gloo):
    (tmp_path / "tinyjob.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        def model():
            torch.manual_seed(2)
            return nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))

        def data():
            g = torch.Generator().manual_seed(1)
            x = torch.randn(40, 12, generator=g)
            ds = TensorDataset(x, (x[:, 0] > 0).long())
            return DataLoader(ds, batch_size={PER_RANK_BATCH}, shuffle=True), DataLoader(ds, batch_size=40)
    """))
    (tmp_path / "job.yaml").write_text(textwrap.dedent("""
        model: {factory: "tinyjob:model"}
        data: {factory: "tinyjob:data"}
        tasks: [{layers: ["0"], options: {rank: 4}}]
        schedule: {mu0: 0.01, factor: 2.0, steps: 2}
        train: {epochs: 1, lr: 0.05}
        output_dir: run
    """))
    env = {**gloo, "LCPRESS_QUIET": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={WORLD}", "--nnodes=1",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", "--local-addr=127.0.0.1",
           "-m", "lcpress", "compress", "job.yaml", "--quiet"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("realized model vs Δ(θ)") == 1  # only rank 0 prints the summary
    assert lcpress.load(tmp_path / "run" / "model.safetensors")[0][0].weight.shape == (4, 12)
    assert (tmp_path / "run" / "report.md").is_file()


def test_a_train_loader_that_cannot_be_sharded_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(lcpress.ConfigError, match="DistributedSampler"):
        distributed.shard_loader([(torch.zeros(1), torch.zeros(1))], 0)
    weighted = DataLoader(dataset(), batch_size=4, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 60, 60))
    with pytest.raises(lcpress.ConfigError, match="WeightedRandomSampler"):
        distributed.shard_loader(weighted, 0)
