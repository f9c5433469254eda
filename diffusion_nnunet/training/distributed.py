"""Data-parallel training with torch.distributed: process groups, launch, and small helpers.

Two ways in, one code path:
- `dnnunet train --num-processes N` starts N local processes with `torch.multiprocessing`
  (`launch`); the parent supervises them and fails with the rank that died;
- `torchrun` (several machines) starts the processes itself and sets RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT; `run_from_environment` joins that process group.

The backend follows the device: NCCL for CUDA, gloo for the CPU. Collectives time out after
`timeout_s`, so a peer that vanishes on another machine ends the run instead of hanging it.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import wait as wait_for_any
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from dnnunet_core.errors import UserInputError

logger = logging.getLogger(__name__)

# testing aid: "RANK:ITERATION" makes that rank SIGKILL itself before that (0-based, global) iteration
FAULT_ENV = "DNNUNET_FAULT_KILL_RANK_AT"
_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class WorkerFailedError(RuntimeError):
    """A training process died or raised; the run was stopped.

    Args:
        message: what happened, naming the failed rank(s).
        failed_ranks: ranks that exited abnormally on their own (the launcher's terminations excluded).
    """

    def __init__(self, message: str, failed_ranks: list[int]):
        super().__init__(message)
        self.failed_ranks = failed_ranks


@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in the process group.

    Args:
        rank: global rank, 0..world_size-1.
        world_size: number of processes over all machines.
        local_rank: rank on this machine (selects the GPU).
        local_world_size: processes on this machine (shares the CPU cores).
        master_addr: host of rank 0's rendezvous store.
        master_port: its port.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistributedEnv | None":
        """Parse torchrun's variables; None when WORLD_SIZE is not set (not launched by torchrun).

        Raises:
            UserInputError: some variables are missing or inconsistent.
        """
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return None
        missing = [k for k in _TORCHRUN_KEYS if k not in environ]
        if missing:
            raise UserInputError(f"WORLD_SIZE is set but {', '.join(missing)} not: launch with torchrun, "
                                 "which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT")
        try:
            out = cls(rank=int(environ["RANK"]), world_size=int(environ["WORLD_SIZE"]),
                      local_rank=int(environ["LOCAL_RANK"]),
                      local_world_size=int(environ.get("LOCAL_WORLD_SIZE", environ["WORLD_SIZE"])),
                      master_addr=environ["MASTER_ADDR"], master_port=int(environ["MASTER_PORT"]))
        except ValueError as err:
            raise UserInputError(f"torchrun variables must be integers: {err}") from None
        out.validate()
        return out

    def validate(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserInputError(f"RANK {self.rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {self.world_size})")
        if not 0 <= self.local_rank < self.local_world_size <= self.world_size:
            raise UserInputError(f"LOCAL_RANK {self.local_rank} / LOCAL_WORLD_SIZE {self.local_world_size} "
                                 f"do not fit WORLD_SIZE {self.world_size}")

    def to_environ(self) -> dict[str, str]:
        """The variables torchrun would set, for processes we start ourselves."""
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr,
                "MASTER_PORT": str(self.master_port)}


@dataclass(frozen=True)
class BatchShard:
    """One rank's part of the planned (global) batch.

    Args:
        start: index of the rank's first sample in the global batch.
        stop: one past its last sample.
        oversample_foreground_percent: share of its samples forced to contain foreground.
    """

    start: int
    stop: int
    oversample_foreground_percent: float

    @property
    def size(self) -> int:
        return self.stop - self.start


def shard_batch(global_batch_size: int, world_size: int, rank: int, oversample_foreground_percent: float) -> BatchShard:
    """Split the planned batch over ranks as nnU-Net does, keeping the global foreground share.

    The first `global % world` ranks get one sample more. nnU-Net's data loader forces foreground
    in the last `batch - round(batch * (1 - p))` samples of a batch; each rank gets the share of
    those forced samples that falls in its slice, so that the global batch is sampled like one
    single-process batch.

    Args:
        global_batch_size: the plans' batch size.
        world_size: number of processes.
        rank: this process's global rank.
        oversample_foreground_percent: the single-process foreground share p.

    Raises:
        UserInputError: fewer samples than processes.
    """
    if global_batch_size < world_size:
        raise UserInputError(f"the planned batch size {global_batch_size} is smaller than the number of processes "
                             f"{world_size}: use at most {global_batch_size} processes")
    sizes = [global_batch_size // world_size + (1 if r < global_batch_size % world_size else 0)
             for r in range(world_size)]
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    first_forced = round(global_batch_size * (1 - oversample_foreground_percent))
    forced = sum(1 for i in range(start, stop) if i >= first_forced)
    return BatchShard(start, stop, forced / sizes[rank])


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU.

    Raises:
        UserInputError: a device without a collective backend (MPS).
    """
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise UserInputError(f"multi-process training runs on cpu or cuda devices, not {device.type}")


def device_for_rank(device: torch.device, local_rank: int) -> torch.device:
    """The device a process uses: its own GPU (by local rank) on CUDA, else `device` itself.

    Raises:
        UserInputError: more processes on this machine than visible GPUs.
    """
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserInputError(f"local rank {local_rank} has no GPU: {count} visible; start at most {count} "
                             "processes per machine")
    return torch.device("cuda", local_rank)


def cpu_threads_per_process(local_world_size: int, cpu_count: int | None = None) -> int:
    """Torch threads for one CPU process, so that the processes on a machine share its cores."""
    return max(1, (cpu_count or os.cpu_count() or 1) // max(1, local_world_size))


def find_free_port() -> int:
    """A free TCP port on this machine, for the local rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----------------------------------------------------------------------------- inside a process group
def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Global rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (picklable objects; identity outside a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def maybe_inject_fault(iteration: int) -> None:
    """Testing aid: SIGKILL this process at `iteration` if FAULT_ENV says so (a hard death, like the OOM killer)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target_rank, target_iteration = (int(v) for v in spec.split(":"))
    if rank() == target_rank and iteration == target_iteration:
        logger.warning("fault injection (%s=%s): rank %d kills itself at iteration %d", FAULT_ENV, spec,
                       target_rank, iteration)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)


def init_process_group(env: DistributedEnv, device: torch.device, timeout_s: float) -> torch.device:
    """Join the process group described by `env`; return this process's device.

    Args:
        env: rank, world size and rendezvous address.
        device: the requested device (its type; CUDA processes take the GPU of their local rank).
        timeout_s: seconds a collective may wait for the other ranks before it fails.
    """
    device = device_for_rank(device, env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # NCCL otherwise blocks forever on a dead peer; with this it raises after the timeout
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    else:
        torch.set_num_threads(cpu_threads_per_process(env.local_world_size))
    # env:// reads MASTER_ADDR/PORT; under torchrun it also reuses the agent's rendezvous store
    os.environ.update(env.to_environ())
    dist.init_process_group(backend_for(device), init_method="env://", rank=env.rank, world_size=env.world_size,
                            timeout=timedelta(seconds=timeout_s))
    logger.debug("rank %d/%d joined (%s, %s)", env.rank, env.world_size, backend_for(device), device)
    return device


def run_from_environment(fn: Callable[..., Any], args: tuple, device: torch.device, timeout_s: float) -> Any:
    """Run `fn(device, *args)` in the process group torchrun set up in the environment.

    Raises:
        UserInputError: not launched by torchrun (no WORLD_SIZE).
    """
    env = DistributedEnv.from_environ()
    if env is None:
        raise UserInputError("not launched by torchrun: WORLD_SIZE is not set")
    if env.rank != 0:  # every rank would repeat rank 0's progress messages
        root = logging.getLogger()
        root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))
    device = init_process_group(env, device, timeout_s)
    return run_in_group(fn, device, args)


def run_in_group(fn: Callable[..., Any], device: torch.device, args: tuple) -> Any:
    """`fn(device, *args)`, then leave the process group together with the other ranks.

    A rank that tears its gloo group down while a peer is still at work (rank 0 saving, say) can
    die in gloo's C++ teardown ("terminate called without an active exception", SIGABRT); the
    closing barrier keeps every rank in the group until all are done. So can a rank whose group
    outlives `destroy_process_group` because a DDP wrapper left in a reference cycle still holds
    it: it is then freed during interpreter shutdown, too late; hence the collection first.
    After a failure the group is left at once (the peers then fail their next collective and stop).
    """
    try:
        result = fn(device, *args)
        dist.barrier()
        return result
    finally:
        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- local launch
def _worker(local_rank: int, fn: Callable[..., Any], args: tuple, world: int, port: int, device_type: str,
            timeout_s: float, log_level: int) -> None:
    env = DistributedEnv(local_rank, world, local_rank, world, "127.0.0.1", port)
    # spawned processes start without the parent's logging set-up; ranks > 0 only report problems
    logging.basicConfig(level=log_level if local_rank == 0 else max(log_level, logging.WARNING),
                        format=f"%(asctime)s %(levelname)s rank {local_rank} %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    device = init_process_group(env, torch.device(device_type), timeout_s)
    try:
        run_in_group(fn, device, args)
    except UserInputError as err:
        logger.error("rank %d: %s", local_rank, err)
        raise SystemExit(2) from None


def launch(fn: Callable[..., Any], args: tuple, num_processes: int, device: torch.device,
           timeout_s: float, master_port: int | None = None) -> None:
    """Run `fn(device, *args)` in `num_processes` local processes forming one process group.

    `fn` and `args` must be picklable (the processes are spawned). The call returns when all
    processes have finished; if one dies or raises, the others are stopped.

    Args:
        fn: top-level function; gets the process's device first.
        args: further positional arguments.
        num_processes: processes to start (one per GPU on CUDA).
        device: requested device (cpu or cuda).
        timeout_s: collective timeout in each process.
        master_port: rendezvous port (default: MASTER_PORT, else a free one).

    Raises:
        WorkerFailedError: a process exited abnormally; the message names its rank.
    """
    import torch.multiprocessing as mp

    backend_for(device)  # fail early on unsupported devices
    if device.type == "cuda" and num_processes > torch.cuda.device_count():
        raise UserInputError(f"{num_processes} processes need as many GPUs; {torch.cuda.device_count()} visible")
    port = master_port or int(os.environ.get("MASTER_PORT") or find_free_port())
    log_level = logging.getLogger().getEffectiveLevel()
    logger.info("starting %d processes (%s backend, rendezvous 127.0.0.1:%d)", num_processes, backend_for(device),
                port)
    context = mp.start_processes(_worker, args=(fn, args, num_processes, port, device.type, timeout_s, log_level),
                                 nprocs=num_processes, join=False, start_method="spawn")
    try:
        supervise(context.processes)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: do not leave a rank behind
        _stop(context.processes, grace_s=5.0)
        raise


def supervise(processes: list, grace_s: float = 5.0) -> None:
    """Wait for the processes; on the first abnormal exit stop the others and raise.

    A rank killed by a signal is reported first: a peer that loses its connection to a dead rank
    raises shortly after, and the dead rank is the cause.

    Args:
        processes: `multiprocessing.Process` objects, index = rank.
        grace_s: seconds the others get to exit after SIGTERM before SIGKILL.

    Raises:
        WorkerFailedError: naming the failed rank(s) and how they ended.
    """
    while True:
        running = [p for p in processes if p.exitcode is None]
        failed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
        if failed or not running:
            break
        wait_for_any([p.sentinel for p in running])
    if not failed:
        return
    time.sleep(0.2)  # let near-simultaneous failures land, so the report is complete
    failed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
    _stop(processes, grace_s)
    failed.sort(key=lambda r: (processes[r].exitcode >= 0, r))  # signal deaths first
    described = "; ".join(f"rank {r} {_describe_exit(processes[r].exitcode)}" for r in failed)
    raise WorkerFailedError(f"training stopped: {described}. The other ranks were stopped; resume with --continue.",
                            failed)


def _stop(processes: list, grace_s: float) -> None:
    """SIGTERM the processes still running, SIGKILL those not gone after `grace_s`."""
    for p in processes:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def _describe_exit(exitcode: int) -> str:
    if exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode} (see its log above)"
