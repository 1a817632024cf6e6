"""A search's files: its checkpoint (written by rank 0, read back and checked when a search resumes,
sent to the other ranks over the process group), the supernets kept every ``keep_every`` epochs and
the early-stop snapshots.  ``Search.files`` is one of these."""

from __future__ import annotations

import shutil
from typing import Any

from nas import config as config_mod
from nas import hessian as hessian_mod
from nas import parallel
from nas.progress import log_line
from nas.rundir import CHECKPOINT_FORMAT, SEARCH_CHECKPOINT, SEARCH_FREE_KEYS, check_resume, kept_checkpoint
from nas.runs.files import torch_load, torch_save
from nas.utils import NasError, atomic_write

CHECKPOINT = SEARCH_CHECKPOINT
SearchState = Any


class SearchFiles:
    """The checkpoint, kept supernets and snapshots of one ``Search``."""

    def __init__(self, search: Any):
        self.search = search

    def save(self, st: SearchState) -> None:
        """Rank 0 writes the checkpoint; the other ranks write nothing."""
        s = self.search
        if not s.shards.main:
            return
        torch_save(s.out / CHECKPOINT, {
            "format": CHECKPOINT_FORMAT,
            "config": config_mod.to_dict(s.cfg),
            "data_sha256": s.data_sha256,
            "epoch": st.epoch,
            **st.train_state(),
            "sched": st.sched.state_dict(),
            "history": st.history,
            "early_stop": st.early_stop,
            "world": s.shards.world,
        })

    def read(self) -> dict:
        """This run's checkpoint, refused when written with another config or other data."""
        s = self.search
        path = s.out / CHECKPOINT
        ck = torch_load(path, map_location=s.device)
        if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
            raise NasError(f"{path}: not a search checkpoint")
        if not isinstance(ck.get("config"), dict):
            raise NasError(f"{path}: not a search checkpoint (no config)")
        check_resume(path, ck["config"], config_mod.to_dict(s.cfg), config_mod.to_dict(type(s.cfg)()),
                     SEARCH_FREE_KEYS, ck.get("data_sha256"), s.data_sha256)
        world = ck.get("world", 1)
        if world != s.shards.world:
            raise parallel.RankMismatch(f"{path}: cannot resume with {s.shards.world} rank(s): the checkpoint was "
                                        f"written by {world} (resume with the world size the search started with)")
        return ck

    def resume(self, resume: bool) -> dict | None:
        """The checkpoint to continue from (None: start afresh): rank 0 reads it, the other ranks
        receive it over the process group (no shared folder needed)."""
        s = self.search
        def read() -> dict | None:
            if resume and (s.out / CHECKPOINT).is_file():
                return self.read()
            if resume:
                log_line(None, f"no checkpoint in {s.out}; starting from scratch")
            return None

        ck = s.shards.agree(read, "reading the checkpoint")
        if s.shards.world > 1:
            ck = s.shards.broadcast(None if ck is None else parallel.to_cpu(ck))
        return ck

    def load(self, st: SearchState, ck: dict) -> None:
        s = self.search
        for i in range(1, len(s.stages)):
            if int(ck["epoch"]) >= s.stage_starts[i]:
                s.enter_stage(st, i, prune=False)  # the stage's shapes; values come from the checkpoint
        st.load_train_state(ck, s.out / CHECKPOINT)
        st.sched.load_state_dict(ck["sched"])
        st.epoch = int(ck["epoch"])
        st.history = list(ck["history"])
        st.early_stop = ck.get("early_stop")

    def early_stop(self, st: SearchState) -> int | None:
        """Keep snapshots of (w, arch) for the look-back; on a stop, restore the one to return."""
        s = self.search
        cfg = s.cfg
        if not cfg.early_stop:
            return None
        snap_dir = s.out / "snapshots"
        snap_dir.mkdir(parents=True, exist_ok=True)
        torch_save(snap_dir / f"epoch-{st.epoch}.pt", {"model": st.model.state_dict(), "arch": st.arch.state_dict()})
        old = snap_dir / f"epoch-{st.epoch - cfg.es_lookback - 1}.pt"
        if old.exists():
            old.unlink()
        eigs = {h["epoch"]: h["hessian_eig"] for h in st.history if "hessian_eig" in h}
        rollback = hessian_mod.early_stop_epoch(eigs, st.epoch, cfg.es_window, cfg.es_lookback, cfg.es_factor, cfg.es_start)
        if rollback is None:
            return None
        snap = torch_load(snap_dir / f"epoch-{rollback}.pt", map_location=s.device)
        st.model.load_state_dict(snap["model"])
        st.arch.load_state_dict(snap["arch"])
        st.early_stop = {"stopped_at": st.epoch, "rollback_epoch": rollback}
        return rollback

    def keep(self, epoch: int) -> None:
        """A copy of this epoch's checkpoint, for selection at this epoch (``keep_every``)."""
        s = self.search
        atomic_write(kept_checkpoint(s.out, epoch), lambda p: shutil.copyfile(s.out / CHECKPOINT, p))
