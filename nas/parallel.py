"""One search over several processes: data-parallel supernet training on ``torch.distributed``.

A search's global batch (``batch_size``, of the w split and of the α split alike) is cut into
``shards = world size × accumulate`` micro-batches, in order; rank ``r`` trains on micro-batches
``r·accumulate … r·accumulate + accumulate − 1``.  Every rank draws the same global batch (the
batch streams are seeded from (seed, epoch) as in one process) and keeps its slices.  Each
micro-batch's loss is weighted by its share of the global batch, the gradients of w and of α are
summed over a rank's micro-batches and then over the ranks (one all-reduce per step each), so every
rank takes the same optimiser step and holds the same w and α after it: all ranks end on one
genotype.  One process with ``accumulate: k`` computes exactly what k ranks compute, up to the
order of the final sum.

Randomness per micro-batch: micro-batch ``j`` draws its mixing samples (Gumbel, Dirichlet,
uniform paths) and its perturbation noise (SDARTS) from streams of its own, derived from (seed,
epoch, j); micro-batch 0 keeps the single-process streams, so a search with one shard is the
search it always was.  Batch-norm statistics are each micro-batch's own (each rank keeps its
running statistics); the checkpoint holds rank 0's.

Rank 0 owns the run: the folder and its claim, checkpoints, ``result.json``, tracking.  The other
ranks write nothing; on a resume they receive rank 0's checkpoint over the process group, so no
folder needs to be shared between hosts.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas.utils import NasError

# set by torchrun (torch.distributed.run) in every process it starts
ENV_WORLD, ENV_RANK, ENV_LOCAL_RANK, ENV_RESTARTS = "WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"


class RankMismatch(NasError):
    """The ranks of one search disagree (their configs, their world at resume): refused everywhere."""


def launched_world() -> int:
    """The world size torchrun started this process in (1 when started plainly)."""
    try:
        return max(1, int(os.environ.get(ENV_WORLD, "1")))
    except ValueError:
        raise NasError(f"${ENV_WORLD}: expected a whole number, got {os.environ[ENV_WORLD]!r}") from None


def restarted() -> bool:
    """Whether torchrun restarted this process after a failure (``--max-restarts``)."""
    return os.environ.get(ENV_RESTARTS, "0") not in ("", "0")


@dataclass(frozen=True)
class Shards:
    """This process's place in a search: its rank, the world size, its micro-batches per step."""

    rank: int = 0
    world: int = 1
    accumulate: int = 1

    @property
    def total(self) -> int:
        return self.world * self.accumulate

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mine(self) -> range:
        """The indices of this rank's micro-batches."""
        return range(self.rank * self.accumulate, (self.rank + 1) * self.accumulate)

    def parts(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[tuple[int, tuple[torch.Tensor, torch.Tensor], float]]:
        """This rank's (index, micro-batch, share of the global batch) of one global batch; the
        cut is ``torch.tensor_split``'s (sizes differ by at most one); empty micro-batches are left out."""
        x, y = batch
        n = len(y)
        xs, ys = torch.tensor_split(x, self.total), torch.tensor_split(y, self.total)
        return [(j, (xs[j], ys[j]), len(ys[j]) / n) for j in self.mine() if len(ys[j])]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` over the ranks, in place, in one all-reduce (nothing in one process)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        torch.distributed.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def agree(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` on rank 0 only; its one-line failure is raised on every rank, so that no rank
        waits for one that has given up.  Returns ``fn``'s value on rank 0, None elsewhere."""
        value, error = None, None
        if self.main:
            try:
                value = fn()
            except NasError as exc:
                if self.world == 1:
                    raise
                error = str(exc)
        error = self.broadcast(error)
        if error is not None:
            raise NasError(error if self.main else f"rank 0, {what}: {error}")
        return value


def device_for(name: str, world: int) -> str:
    """Each rank's device: ``cuda`` (or ``auto`` with CUDA present) becomes ``cuda:LOCAL_RANK``."""
    if world == 1:
        return name
    if name.startswith("cuda:"):
        raise NasError(f"device: {name!r} names one card, but {world} ranks each take their own; "
                       "pass --device cuda (rank r uses cuda:LOCAL_RANK)")
    cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return f"cuda:{os.environ.get(ENV_LOCAL_RANK, '0')}" if cuda else ("cpu" if name == "auto" else name)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it moved to the CPU (what one rank sends another)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def start(accumulate: int, timeout_s: float, device: str) -> Shards:
    """Join the process group torchrun set up (gloo on CPUs, NCCL on GPUs), or stay alone.  A rank
    that cannot reach the others fails after ``timeout_s`` with one line."""
    world = launched_world()
    if world == 1:
        return Shards(0, 1, accumulate)
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        try:
            _join(backend, world, datetime.timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, OSError, KeyError) as exc:  # the store or the peers cannot be reached
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise NasError(f"rank {os.environ.get(ENV_RANK, '?')} of {world}: could not join the others at {where} "
                           f"within {timeout_s:g} s ({type(exc).__name__})") from None
    return Shards(torch.distributed.get_rank(), torch.distributed.get_world_size(), accumulate)


def _join(backend: str, world: int, timeout: datetime.timedelta) -> None:
    """The process group, over a store whose keys are this attempt's own: after torchrun restarts
    the ranks (``--max-restarts``), the store it keeps still holds the dead ranks' addresses, and a
    rank that read one of them would wait for a peer that is gone."""
    rank = int(os.environ.get(ENV_RANK, "0"))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    store = torch.distributed.TCPStore(os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"]),
                                       world, is_master=not agent and rank == 0, timeout=timeout,
                                       wait_for_workers=False)
    attempt = os.environ.get(ENV_RESTARTS, "0")
    torch.distributed.init_process_group(backend, store=torch.distributed.PrefixStore(f"nas/attempt-{attempt}", store),
                                         rank=rank, world_size=world, timeout=timeout)


def launch(kind: str, cfg: Any, resume: bool, force: bool) -> Path:
    """Run the ``nas search`` or ``nas select`` stage ``cfg`` in ``cfg.nproc`` processes on this host
    under torchrun (each with the same settings); returns ``cfg.out``, which rank 0 wrote.  The ranks
    track nothing: whoever called this tracks the result."""
    import subprocess
    import sys
    import tempfile

    import yaml

    from nas import config as config_mod

    with tempfile.TemporaryDirectory(prefix="nas-ranks-") as tmp:
        settings = Path(tmp) / f"{kind}.yaml"
        settings.write_text(yaml.safe_dump({kind: config_mod.to_dict(cfg)}, sort_keys=False))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc}",
               f"--max-restarts={getattr(cfg, 'max_restarts', 0)}", "-m", "nas.cli", kind, "--config", str(settings),
               "--json", *(["--resume"] if resume else []), *(["--force"] if force else [])]
        proc = subprocess.run(cmd, env={**os.environ, "NAS_MLFLOW": "0"}, stdout=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise NasError(f"{cfg.out}: the {kind} in {cfg.nproc} processes failed (torchrun exit {proc.returncode}); "
                       "the ranks' own lines above say why")
    return Path(cfg.out)


def starts_ranks(nproc: int) -> bool:
    """Whether a stage asking for ``nproc`` processes starts them itself (it is not one already)."""
    return nproc > 1 and ENV_WORLD not in os.environ


def env_rank() -> int:
    """This process's rank as torchrun set it (0 when started plainly)."""
    try:
        return int(os.environ.get(ENV_RANK, "0"))
    except ValueError:
        raise NasError(f"${ENV_RANK}: expected a whole number, got {os.environ[ENV_RANK]!r}") from None


def stop() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_same(shards: Shards, what: str, value: dict[str, Any]) -> None:
    """Refuse, on every rank, a ``value`` (a config) that differs between ranks: one line naming the
    first rank and key that differ from rank 0's."""
    values = shards.gather(json.loads(json.dumps(value, default=str)))
    for rank, other in enumerate(values[1:], start=1):
        if other != values[0]:
            key = next(k for k in sorted(set(other) | set(values[0])) if other.get(k) != values[0].get(k))
            raise RankMismatch(f"rank {rank}'s {what} differs from rank 0's: {key} is {other.get(key)!r} there, "
                               f"{values[0].get(key)!r} on rank 0")


class ShardRandom:
    """The global random stream of each micro-batch (torch's own generator: Dirichlet samples),
    swapped in around that micro-batch's work.  Micro-batch 0 uses the stream as the loop seeded it."""

    def __init__(self, seeds: dict[int, int], device: torch.device):
        self.device = device
        self.states: dict[int, Any] = {}
        for j, seed in seeds.items():
            with torch.random.fork_rng(devices=self._devices()):
                torch.manual_seed(seed)
                self.states[j] = self._get()

    def _devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get(self) -> Any:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: Any) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextlib.contextmanager
    def of(self, j: int) -> Iterator[None]:
        if j not in self.states:
            yield
            return
        outer = self._get()
        self._set(self.states[j])
        try:
            yield
        finally:
            self.states[j] = self._get()
            self._set(outer)
