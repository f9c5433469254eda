"""Multi-process training (torch.distributed, gloo on the CPU): pure pieces, then real 2-process runs.

The slow tests start real process groups on this machine (2 gloo processes); each pays the
imports of torch and nnunetv2 in every process, so they are kept to a few iterations.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_nnunet.training import distributed
from diffusion_nnunet.training.distributed import (
    DistributedEnv,
    WorkerFailedError,
    backend_for,
    cpu_threads_per_process,
    device_for_rank,
    shard_batch,
)
from dnnunet_core.errors import UserInputError

DATASET_ID = 513


def find_resume_checkpoint(folder: Path) -> Path | None:
    # imported here: spawned workers import this module, and run.py pulls in nnunetv2's trainer
    from diffusion_nnunet.training.run import find_resume_checkpoint as find

    return find(folder)
TORCHRUN_ENV = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}


# ----------------------------------------------------------------------------- pure pieces
def test_backend_follows_device():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda")) == "nccl"
    with pytest.raises(UserInputError, match="cpu or cuda"):
        backend_for(torch.device("mps"))


def test_device_for_rank():
    assert device_for_rank(torch.device("cpu"), 3) == torch.device("cpu")
    with pytest.raises(UserInputError, match="has no GPU"):  # one more local rank than visible GPUs
        device_for_rank(torch.device("cuda"), torch.cuda.device_count())


def test_torchrun_environment_parsing():
    assert DistributedEnv.from_environ({}) is None  # not under torchrun
    env = DistributedEnv.from_environ(TORCHRUN_ENV)
    assert env == DistributedEnv(rank=3, world_size=8, local_rank=1, local_world_size=4, master_addr="node0",
                                 master_port=29500)
    assert DistributedEnv.from_environ(env.to_environ()) == env
    single_node = {k: v for k, v in TORCHRUN_ENV.items() if k != "LOCAL_WORLD_SIZE"} | {"RANK": "1", "WORLD_SIZE": "2"}
    assert DistributedEnv.from_environ(single_node).local_world_size == 2
    with pytest.raises(UserInputError, match="MASTER_PORT"):
        DistributedEnv.from_environ({k: v for k, v in TORCHRUN_ENV.items() if k != "MASTER_PORT"})
    with pytest.raises(UserInputError, match="not in 0..WORLD_SIZE-1"):
        DistributedEnv.from_environ(TORCHRUN_ENV | {"RANK": "8"})
    with pytest.raises(UserInputError, match="integers"):
        DistributedEnv.from_environ(TORCHRUN_ENV | {"RANK": "x"})


def test_cpu_threads_are_shared_between_local_processes():
    assert cpu_threads_per_process(1, cpu_count=16) == 16
    assert cpu_threads_per_process(4, cpu_count=16) == 4
    assert cpu_threads_per_process(3, cpu_count=2) == 1


@pytest.mark.parametrize("batch,world", [(2, 2), (5, 2), (7, 3), (8, 4), (12, 5)])
@pytest.mark.parametrize("p", [0.0, 0.33, 0.5, 1.0])
def test_batch_split_keeps_global_batch_and_foreground_share(batch, world, p):
    shards = [shard_batch(batch, world, r, p) for r in range(world)]
    assert [s.start for s in shards] == [0] + [s.stop for s in shards[:-1]]  # contiguous
    assert shards[-1].stop == batch
    assert max(s.size for s in shards) - min(s.size for s in shards) <= 1
    # nnU-Net's loader forces foreground in the last batch - round(batch * (1 - p)) samples of a batch
    forced = [s.size - round(s.size * (1 - s.oversample_foreground_percent)) for s in shards]
    assert sum(forced) == batch - round(batch * (1 - p))


@pytest.mark.parametrize("batch,world", [(2, 2), (5, 2), (7, 3), (12, 5)])
def test_batch_split_agrees_with_nnunet(batch, world, monkeypatch):
    """Cross-check with nnU-Net's own (CUDA-only path) split, run on a stub with a faked process group."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    for r in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=r: r)
        stub = types.SimpleNamespace(is_ddp=True, oversample_foreground_percent=0.33,
                                     configuration_manager=types.SimpleNamespace(batch_size=batch))
        nnUNetTrainer._set_batch_size_and_oversample(stub)
        ours = shard_batch(batch, world, r, 0.33)
        assert (ours.size, ours.oversample_foreground_percent) == pytest.approx(
            (stub.batch_size, stub.oversample_foreground_percent))


def test_batch_smaller_than_process_count_is_refused():
    with pytest.raises(UserInputError, match="at most 2 processes"):
        shard_batch(2, 3, 0, 0.33)


def test_num_processes_conflicts_with_torchrun(monkeypatch):
    from diffusion_nnunet.training.run import train

    for k, v in TORCHRUN_ENV.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserInputError, match="torchrun"):
        train("999", "2d", 0, num_processes=2)


def _dc_and_ce(batch_dice: bool, ddp: bool):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": ddp}, {},
                          weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)


def test_shard_aware_loss_weights_local_means_by_the_shard_share():
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    from diffusion_nnunet.training.ddp_loss import ShardedBatchDiceLoss, make_shard_aware

    loss = make_shard_aware(DeepSupervisionWrapper(_dc_and_ce(True, True), [0.5, 0.5]), 1, 3, 2)
    assert isinstance(loss.loss.dc, ShardedBatchDiceLoss)  # gathered: global already, weight kept
    assert (loss.loss.weight_ce, loss.loss.weight_dice) == pytest.approx((2 / 3, 1))
    per_sample = make_shard_aware(_dc_and_ce(False, True), 2, 3, 2)
    assert (per_sample.weight_ce, per_sample.weight_dice) == pytest.approx((4 / 3, 4 / 3))
    even = make_shard_aware(_dc_and_ce(True, True), 2, 4, 2)
    assert (even.weight_ce, even.weight_dice) == (1, 1)


def _loss_gradients(device: torch.device, out_file: str) -> None:
    """Gradient of nnU-Net's Dice + CE for a fixed batch of 3: this rank's shard (2 or 1 samples)
    under DDP with the shard-aware loss, or the whole batch outside a process group."""
    from torch.nn.parallel import DistributedDataParallel

    from diffusion_nnunet.training.ddp_loss import make_shard_aware

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 3, (3, 1, 8, 8))
    world, rank = distributed.world_size(), distributed.rank()
    shard = shard_batch(3, world, rank, 0.33)
    loss = _dc_and_ce(True, world > 1)
    if world > 1:
        net = DistributedDataParallel(net)
        loss = make_shard_aware(loss, shard.size, 3, world)
    loss(net(x[shard.start:shard.stop]), y[shard.start:shard.stop]).backward()
    if rank == 0:
        torch.save({n.removeprefix("module."): p.grad for n, p in net.named_parameters()}, out_file)


@pytest.mark.slow
def test_uneven_shards_give_the_single_process_gradient(tmp_path):
    """Batch 3 over 2 ranks (2 + 1 samples): nnU-Net's own DDP loss fails here (gloo: size
    mismatch in the Dice gather) and would weigh the lone sample double in the CE."""
    _loss_gradients(torch.device("cpu"), str(tmp_path / "single.pt"))
    distributed.launch(_loss_gradients, (str(tmp_path / "ddp.pt"),), 2, torch.device("cpu"), timeout_s=60)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    for name in single:
        assert torch.allclose(single[name], ddp[name], atol=1e-6, rtol=1e-5), name


def _pair_closure_gradients(device: torch.device, out_file: str) -> None:
    """Gradients of a teacher/student loss on a batch of 2 that leaves the student's Rec unused:
    one sample per rank, the loss run as a closure through DDP's forward (as the semi-supervised
    trainers do), or both samples in one process."""
    from torch.nn.functional import cross_entropy
    from torch.nn.parallel import DistributedDataParallel

    from diffusion_nnunet.networks.twin import CoTrainPair
    from tests.training.helpers import SHAPE, C, tiny_twin

    pair = CoTrainPair(tiny_twin(0), tiny_twin(1))
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(SHAPE, generator=g), torch.randint(0, C, (SHAPE[0], *SHAPE[2:]), generator=g)
    world, rank = distributed.world_size(), distributed.rank()
    net = pair
    if world > 1:
        net = DistributedDataParallel(pair, find_unused_parameters=True)
        x, y = x[rank:rank + 1], y[rank:rank + 1]
    m, t = torch.full((x.shape[0], C, *x.shape[2:]), 0.5), torch.tensor(1.0)

    def loss(p: CoTrainPair) -> torch.Tensor:
        teacher = p.teacher.seg_logits(x, m, t)
        rec = p.teacher.rec_eps(torch.zeros_like(x), 2 * torch.softmax(teacher, 1) - 1, t)
        return cross_entropy(teacher, y) + cross_entropy(p.student.seg_logits(x, m, t), y) + rec.pow(2).mean()

    net(loss).backward()
    if rank == 0:
        torch.save({n.removeprefix("module."): p.grad for n, p in net.named_parameters()}, out_file)


@pytest.mark.slow
def test_semi_supervised_loss_closure_through_ddp_gives_the_single_process_gradient(tmp_path):
    _pair_closure_gradients(torch.device("cpu"), str(tmp_path / "single.pt"))
    distributed.launch(_pair_closure_gradients, (str(tmp_path / "ddp.pt"),), 2, torch.device("cpu"), timeout_s=60)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert all(single[n] is None and ddp[n] is None for n in single if n.startswith("student.rec."))
    used = [n for n in single if single[n] is not None]
    assert any(n.startswith("teacher.rec.") for n in used) and any(n.startswith("student.seg.") for n in used)
    for name in used:  # equal up to float summation order (without the reduction: off by O(1))
        assert (single[name] - ddp[name]).abs().max() <= 1e-3 * single[name].abs().max() + 1e-5, name


def _world_size_on(device: torch.device) -> tuple[int, str]:
    return distributed.world_size(), device.type


def test_torchrun_environment_joins_a_process_group(monkeypatch):
    """A one-process group from torchrun's variables (gloo): what each torchrun rank does."""
    env = DistributedEnv(0, 1, 0, 1, "127.0.0.1", distributed.find_free_port())
    for k, v in env.to_environ().items():
        monkeypatch.setenv(k, v)
    assert distributed.run_from_environment(_world_size_on, (), torch.device("cpu"), timeout_s=30) == (1, "cpu")
    assert not distributed.is_distributed()  # left again


def _fake_checkpoint(path: Path, epoch: int) -> None:
    torch.save({"network_weights": {"w": torch.zeros(3)}, "current_epoch": epoch}, path)


def test_resume_skips_damaged_checkpoints_and_takes_the_newest_good_one(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint_latest.pth", 5)
    _fake_checkpoint(tmp_path / "checkpoint_previous.pth", 4)
    _fake_checkpoint(tmp_path / "checkpoint_best.pth", 2)
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_latest.pth"
    data = (tmp_path / "checkpoint_latest.pth").read_bytes()
    (tmp_path / "checkpoint_latest.pth").write_bytes(data[: len(data) // 2])  # truncated
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_previous.pth"
    _fake_checkpoint(tmp_path / "checkpoint_best.pth", 4)  # tie: previous comes first
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_previous.pth"
    (tmp_path / "checkpoint_previous.pth").write_bytes(b"garbage")
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_best.pth"
    _fake_checkpoint(tmp_path / "checkpoint_final.pth", 6)
    assert find_resume_checkpoint(tmp_path).name == "checkpoint_final.pth"


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _die_by_sigkill() -> None:
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)


def test_supervisor_names_the_dead_rank_and_stops_the_others():
    ctx = multiprocessing.get_context("fork")  # plain functions: fork keeps this test fast
    procs = [ctx.Process(target=_sleep, args=(60,)), ctx.Process(target=_die_by_sigkill)]
    for p in procs:
        p.start()
    start = time.monotonic()
    with pytest.raises(WorkerFailedError, match="rank 1 was killed by SIGKILL") as info:
        distributed.supervise(procs, grace_s=2)
    assert time.monotonic() - start < 10  # not the 60 s rank 0 would have slept
    assert info.value.failed_ranks == [1]
    assert all(p.exitcode is not None for p in procs)  # rank 0 was stopped, nothing left running


# ----------------------------------------------------------------------------- real process groups
def _barrier_or_sleep(device: torch.device, sleep_s: float) -> None:
    """Rank 0 waits in a barrier that rank 1 (alive, but stuck) never reaches."""
    if distributed.rank() == 0:
        distributed.barrier()
    else:
        time.sleep(sleep_s)


@pytest.mark.slow
def test_collective_timeout_ends_a_stuck_run():
    start = time.monotonic()
    with pytest.raises(WorkerFailedError, match="rank 0 exited with code 1"):
        distributed.launch(_barrier_or_sleep, (120.0,), 2, torch.device("cpu"), timeout_s=5)
    assert time.monotonic() - start < 60  # the 5 s timeout plus process start-up, not rank 1's 120 s


@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    """A generated 2D dataset planned with the cpu-tiny budget (global batch 2), nothing trained."""
    root = tmp_path_factory.mktemp("ddp")
    env = {name: str(root / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from diffusion_nnunet.datasets import make_dataset
        from planning.budget import get_budget
        from planning.pipeline import plan_and_preprocess

        raw = make_dataset("synthetic-us2d", Path(env["nnUNet_raw"]), DATASET_ID, num_train=8, num_test=2, seed=3)
        plan_and_preprocess(str(DATASET_ID), get_budget("cpu-tiny"), num_processes=1)
        yield {"env": env, "raw": raw, "results": Path(env["nnUNet_results"]) / raw.name}


@pytest.fixture
def plan_env(tiny_plan, monkeypatch):
    for k, v in tiny_plan["env"].items():
        monkeypatch.setenv(k, v)
    return tiny_plan


# --- two processes compute what one process computes on the same global batches ---------------
FIXED_ITERATIONS = 3


def _fixed_batch_trainer_class():
    from diffusion_nnunet.training.baseline import DnnBaselineTrainer

    class FixedBatchTrainer(DnnBaselineTrainer):
        """The baseline fed with stored global batches: each rank takes its shard of every batch,
        exactly the samples a single process sees in its one batch."""

        batches_file: str = ""
        init_file: str = ""

        def on_train_start(self):
            super().on_train_start()
            if self.rank == 0:  # the weights training starts from (after DDP's broadcast from rank 0)
                net = self.network.module if self.is_ddp else self.network
                torch.save(net.state_dict(), self.init_file)

        def get_dataloaders(self):
            stored = torch.load(self.batches_file, weights_only=False)
            shard = shard_batch(self.configuration_manager.batch_size, distributed.world_size(), distributed.rank(),
                                self.config.oversample_foreground_percent)
            assert self.batch_size == shard.size, "nnU-Net's batch split was not applied"

            def part(batch):
                return {"data": batch["data"][shard.start:shard.stop],
                        "target": [t[shard.start:shard.stop] for t in batch["target"]]}

            return iter([part(b) for b in stored["train"]]), iter([part(b) for b in stored["val"]] * 10)

    FixedBatchTrainer.__module__ = __name__
    FixedBatchTrainer.__qualname__ = "FixedBatchTrainer"
    return FixedBatchTrainer


def _train_on_fixed_batches(device: torch.device, batches_file: str, fold: int, init_file: str,
                            validate: bool = False) -> None:
    """One single-process run, or one rank of a multi-process run (called in each process)."""
    from diffusion_nnunet.configs.training_config import TrainingConfig
    from diffusion_nnunet.training.run import load_plans
    from dnnunet_core import paths

    cls = _fixed_batch_trainer_class()
    cls.batches_file, cls.init_file = batches_file, init_file
    name, plans = load_plans(str(DATASET_ID), "2d")
    dataset_json = json.loads((paths.preprocessed() / name / "dataset.json").read_text())
    trainer = cls(plans | {"continue_training": False}, "2d", fold, dataset_json, device)
    trainer.apply_config(TrainingConfig.from_dict(trainer.config.to_dict() | {
        "num_epochs": 1, "num_iterations_per_epoch": FIXED_ITERATIONS, "num_val_iterations_per_epoch": 1,
        "seed": 0}))
    trainer.run_training()
    if validate:
        trainer.run_final_validation()


def _store_global_batches(path: Path) -> None:
    """FIXED_ITERATIONS training batches and one validation batch from nnU-Net's own data pipeline."""
    from diffusion_nnunet.training.run import build_trainer

    _, trainer = build_trainer(str(DATASET_ID), "2d", 0, device=torch.device("cpu"))
    torch.manual_seed(1)
    np.random.seed(1)
    trainer.initialize()
    train_loader, val_loader = trainer.get_dataloaders()
    train = [next(train_loader) for _ in range(FIXED_ITERATIONS)]
    assert train[0]["data"].shape[0] == 2  # the planned global batch
    torch.save({"train": train, "val": [next(val_loader)]}, path)


def _split(plan, fold: int) -> dict:
    preprocessed = Path(plan["env"]["nnUNet_preprocessed"]) / plan["raw"].name
    return json.loads((preprocessed / "splits_final.json").read_text())[fold]


def _final_checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batches(plan_env, tmp_path):
    """DDP on gloo averages the two half-batch gradients and nnU-Net's DDP Dice gathers tp/fp/fn
    over ranks, so one step on two half-batches equals one step on the whole batch up to float
    summation order and nnU-Net's 1e-6 DDP weight on the lowest deep-supervision output.

    Tolerances (measured here: weights differ by ~2e-6 after 3 SGD steps that move them by
    ~1.5e-2; softmax outputs by ~1e-4): weights 1e-4 absolute and at most 1% of the training
    update, softmax 1e-3, argmax agreement 99.9%, pseudo-validation Dice 1e-3. Averaging
    wrongly (summing), a wrong batch split or ungathered Dice statistics break these by far."""
    batches = tmp_path / "batches.pt"
    _store_global_batches(batches)
    init1, init2 = tmp_path / "init1.pt", tmp_path / "init2.pt"
    _train_on_fixed_batches(torch.device("cpu"), str(batches), 3, str(init1))
    distributed.launch(_train_on_fixed_batches, (str(batches), 0, str(init2), True), 2, torch.device("cpu"),
                       timeout_s=120)

    folder = plan_env["results"] / "FixedBatchTrainer__dnnunetPlans__2d"
    single, multi = _final_checkpoint(folder / "fold_3"), _final_checkpoint(folder / "fold_0")
    assert single["current_epoch"] == multi["current_epoch"] == 1
    w1, w2 = single["network_weights"], multi["network_weights"]
    diff = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    assert diff < 1e-4, f"weights of 1 and 2 processes differ by {diff}"

    # same start (rank 0 seeds like the single process; DDP broadcasts rank 0's weights), and
    # training moved the weights far more than the two runs differ
    w0, w0_multi = torch.load(init1), torch.load(init2)
    assert all(torch.equal(w0[k], w0_multi[k]) for k in w0)
    moved = max((w1[k].float() - w0[k].float()).abs().max().item() for k in w1)
    assert moved > 100 * diff and moved > 1e-3, (moved, diff)

    # both networks segment the stored validation batch alike
    from diffusion_nnunet.training.run import build_trainer

    _, fresh = build_trainer(str(DATASET_ID), "2d", 0, device=torch.device("cpu"))
    fresh.initialize()
    nets = []
    for w in (w1, w2):
        net = fresh.build_network_architecture(fresh.plans_manager, fresh.configuration_manager,
                                               fresh.num_input_channels, fresh.label_manager.num_segmentation_heads)
        net.load_state_dict(w)
        nets.append(net.eval())
    data = torch.load(batches, weights_only=False)["val"][0]["data"]
    with torch.no_grad():
        p1, p2 = (torch.softmax(net(data)[0], 1) for net in nets)
    assert (p1 - p2).abs().max().item() < 1e-3
    assert (p1.argmax(1) == p2.argmax(1)).float().mean().item() > 0.999

    # pseudo-validation: the two ranks' counts are all-gathered into the global batch's Dice
    d1 = single["logging"]["dice_per_class_or_region"][-1]
    d2 = multi["logging"]["dice_per_class_or_region"][-1]
    assert np.allclose(d1, d2, atol=1e-3, equal_nan=True), (d1, d2)
    assert not (folder / "fold_0" / "checkpoint_latest.pth").exists()

    # nnU-Net's final validation, sharded over the ranks under gloo: rank 0 predicted its half
    # (its log), waited at the barrier for rank 1's half, then scored all cases
    val_cases = _split(plan_env, 0)["val"]
    assert len(val_cases) == 2
    summary = json.loads((folder / "fold_0" / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2
    log = "".join(f.read_text() for f in (folder / "fold_0").glob("training_log_*.txt"))
    assert sum(f"predicting {case}" in log for case in val_cases) == 1


# --- faults -----------------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_nnunet", "train", "-d", str(DATASET_ID), "-f", "1", "-device", "cpu",
            *args]


@pytest.mark.slow
def test_killed_rank_stops_the_run_and_continue_finishes_with_another_process_count(plan_env, caplog):
    fold = plan_env["results"] / "DnnBaselineTrainer__dnnunetPlans__2d" / "fold_1"
    env = os.environ | {distributed.FAULT_ENV: "1:4"}  # rank 1 dies at the first iteration of epoch 2
    start = time.monotonic()
    proc = subprocess.Popen(_cli("--num-processes", "2", "--seed", "0", "--epochs", "3", "--iterations", "2",
                                 "--val-iterations", "1", "--skip-validation", "--collective-timeout", "300"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run did not stop after a rank died")
    ended = time.time()
    assert proc.returncode == 1, stderr[-3000:]
    assert "rank 1 was killed by SIGKILL" in stderr, stderr[-3000:]
    # epoch 1's checkpoint was written just before the kill: the run ended within seconds of it,
    # far below the 300 s collective timeout it would have waited for had the death gone unseen
    assert ended - (fold / "checkpoint_latest.pth").stat().st_mtime < 30
    assert time.monotonic() - start < 240
    latest = torch.load(fold / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    previous = torch.load(fold / "checkpoint_previous.pth", map_location="cpu", weights_only=False)
    assert (latest["current_epoch"], previous["current_epoch"]) == (2, 1)

    # a damaged newest checkpoint: resume from the newest good one
    data = (fold / "checkpoint_latest.pth").read_bytes()
    (fold / "checkpoint_latest.pth").write_bytes(data[: len(data) // 3])
    chosen = find_resume_checkpoint(fold)
    assert chosen.name in ("checkpoint_previous.pth", "checkpoint_best.pth")

    from diffusion_nnunet.cli.main import main

    caplog.set_level("INFO")
    assert main(["train", "-d", str(DATASET_ID), "-f", "1", "-device", "cpu", "--continue", "--skip-validation",
                 "--num-processes", "1"]) == 0
    assert "checkpoint_latest.pth is unreadable" in caplog.text
    assert f"continuing from {chosen}" in caplog.text
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    assert not (fold / "checkpoint_latest.pth").exists() and not (fold / "checkpoint_previous.pth").exists()
    assert json.loads((fold / "training_config.json").read_text())["collective_timeout_s"] == 300


# --- diffusion trainers: a no-grad first pass through the DDP-wrapped network ------------------
@pytest.mark.slow
def test_diffusion_trainer_trains_continues_and_validates_in_two_processes(plan_env):
    from diffusion_nnunet.cli.main import main

    args = ["train", "-d", str(DATASET_ID), "-f", "2", "-tr", "recycle", "-device", "cpu", "--seed", "0",
            "--iterations", "2", "--val-iterations", "1"]
    fold = plan_env["results"] / "DnnDiffusionTrainer_recycle__dnnunetPlans__2d" / "fold_2"
    assert main(args + ["--epochs", "1", "--skip-validation"]) == 0  # one process
    # resumed by two processes (rank 0 picks the checkpoint and broadcasts it) for one more epoch
    assert main(args + ["--epochs", "2", "--continue", "--num-processes", "2"]) == 0
    final = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["train_losses"]) == 2
    assert not any(k.startswith("module.") for k in final["network_weights"])  # saved unwrapped
    assert json.loads((fold / "training_stats.json").read_text())["num_processes"] == 2
    # the final validation (not sharded by this trainer) ran once, on rank 0, over all cases
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == len(_split(plan_env, 2)["val"])
    assert len(summary["dice_per_sampling_step"]["mean_foreground_dice"]) >= 1
