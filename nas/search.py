"""The search engine: the one bi-level loop, alternating an α step on the α split and a w step on
the w split, over the one supernet of any space.

Methods plug in through ``nas.methods.Method`` (how the mixing weights come from α, how the w
step's weights are perturbed, partial channels, the stage schedule, whether α is trained, the
final selection); the loop holds no method names.  Its public API, used by selection, the
baselines, the grid and the benchmarks:

- ``Search(cfg)``: the space, the method, the device;
- ``streams()``: the search data (bundle, w stream, α stream); ``build_state(bundle)``: a fresh
  ``SearchState`` (supernet, architecture, optimisers);
- ``run_epoch(st, ...)``: one epoch (``alpha=False``: w only); PT's tuning epochs run it too;
- ``mix(st, epoch, gen)``: training mixing weights; ``expected_mix(st)`` / ``expected(st)``:
  deterministic ones;
- its collaborators: ``files`` (``nas.search_files``: ``read()`` / ``load(st, ck)`` / ``save(st)``
  of the checkpoint, kept supernets, early-stop snapshots), ``measurement``
  (``nas.search_measure``: ``evaluate(st, stream, mix)`` the supernet's accuracy, ``measure`` its
  loss and accuracy, ``hessian(st, stream)``) and ``records`` (``nas.search_record``: each epoch's
  record, the result);
- ``run()``: a whole search, writing ``result.json`` and ``checkpoint.pt``.

First order: ∇_α L_val(w, α); second order: ``nas.unrolled``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas import config as config_mod
from nas import parallel
from nas.arch import Architecture
from nas.data import BatchStream, DataBundle, search_streams
from nas.methods import Method, Stage, build_method
from nas.mix import Mix
from nas.precision import Precision, Runner
from nas.progress import log_line, progress_bar, run_label
from nas.rng import rng_stream
from nas.rundir import (
    SEARCH_CHECKPOINT,
    SEARCH_FREE_KEYS,
    SEARCH_RESULT,
    SEARCH_RUN_FILES,
    claim,
)
from nas.runs.resolve import resolve
from nas.search_files import SearchFiles
from nas.search_measure import SearchMeasure
from nas.search_record import SearchRecord
from nas.spaces import SearchSpace, get_space
from nas.supernet import Supernet
from nas.unrolled import unrolled_alpha_grad
from nas.utils import (
    NasError,
    generator_for,
    resolve_device,
    seed_everything,
    torch_threads,
)

CHECKPOINT = SEARCH_CHECKPOINT
RESULT = SEARCH_RESULT
RESUME_FREE_KEYS = SEARCH_FREE_KEYS


@dataclass
class SearchState:
    """Everything that changes during a search; a checkpoint is exactly this."""

    model: nn.Module
    arch: Architecture
    w_opt: torch.optim.SGD
    a_opt: torch.optim.Adam
    sched: torch.optim.lr_scheduler.LRScheduler
    epoch: int  # epochs completed
    history: list[dict[str, Any]]
    early_stop: dict[str, int] | None = None
    # the precision and compilation of the model's forward; the loss scalers of the w and the α
    # step (active for fp16 only)
    precision: Precision | None = None
    compile: bool = False
    w_scaler: torch.amp.GradScaler | None = None
    a_scaler: torch.amp.GradScaler | None = None
    _runner: Runner | None = field(default=None, repr=False)

    def train_state(self) -> dict[str, Any]:
        """What training changes, as checkpoints store it: the supernet, the architecture (α and
        PT's buffers), both optimisers and, when active, the loss scalers."""
        state = {"model": self.model.state_dict(), "arch": self.arch.state_dict(), "w_opt": self.w_opt.state_dict(),
                 "a_opt": self.a_opt.state_dict()}
        if self.w_scaler is not None and self.w_scaler.is_enabled():
            state.update(w_scaler=self.w_scaler.state_dict(), a_scaler=self.a_scaler.state_dict())
        return state

    def load_train_state(self, ck: dict[str, Any], where: Any) -> None:
        """The inverse of ``train_state`` (``where`` names the file in errors)."""
        self.model.load_state_dict(ck["model"])
        if "arch" in ck:
            self.load_arch_state(ck["arch"], where)
        else:  # checkpoints written before the architecture held more than α
            with torch.no_grad():
                self.arch.alpha.copy_(ck["alpha"].to(self.arch.alpha.device))
        self.w_opt.load_state_dict(ck["w_opt"])
        if "a_opt" in ck:
            self.a_opt.load_state_dict(ck["a_opt"])
        for name in ("w_scaler", "a_scaler"):
            scaler = getattr(self, name)
            if name in ck and scaler is not None:
                scaler.load_state_dict(ck[name])

    def load_arch_state(self, arch: dict[str, Any], where: Any) -> None:
        """The architecture's part of ``train_state`` (α, β, PT's decided/removed edges)."""
        # buffers added later (PT's decided/removed) keep their defaults on older checkpoints
        missing, unexpected = self.arch.load_state_dict(arch, strict=False)
        bad = [k for k in missing if k not in ("decided", "removed")] + list(unexpected)
        if bad:
            raise NasError(f"{where}: architecture state does not match (key {bad[0]!r})")

    @property
    def forward(self) -> Runner:
        """``model(x, mix)`` in the search's precision (compiled when asked), for whatever ``model`` is now."""
        if self._runner is None or self._runner.module is not self.model:
            precision = self.precision or Precision("fp32", next(self.model.parameters()).device)
            self._runner = Runner(self.model, precision, self.compile, "supernet")
        return self._runner

    @property
    def alpha(self) -> nn.Parameter:
        return self.arch.alpha



@dataclass
class _StepContext:
    """What every step of an epoch shares: the epoch, whether α trains, α's parameters, and each of
    this rank's micro-batches' mixing generator and global random stream."""

    epoch: int
    train_alpha: bool
    arch_params: list[torch.Tensor]
    gens: dict[int, torch.Generator]
    rand: parallel.ShardRandom


class Search:
    """Set up and run one search from a ``SearchConfig`` (see the module's docstring for the API)."""

    def __init__(self, cfg: config_mod.SearchConfig):
        self.space: SearchSpace = get_space(cfg.space)
        cfg = resolve("search", cfg)  # the space's defaults, as a job of the run layer is keyed
        self.cfg = cfg
        self.method: Method = build_method(cfg)
        self.device = resolve_device(parallel.device_for(cfg.device, parallel.launched_world()))
        self.shards = parallel.start(cfg.accumulate, cfg.dist_timeout, str(self.device))
        self._check_shards()
        self.precision = Precision(cfg.precision, self.device)
        self.out = Path(cfg.out)
        self.stages: tuple[Stage, ...] = self.method.stages
        self.stage_starts = [sum(s.epochs for s in self.stages[:i]) for i in range(len(self.stages))]
        self.train_alpha = self.method.train_alpha and not cfg.fix_alpha
        self.bundle: DataBundle | None = None
        self.data_sha256: str | None = None
        # its collaborators: files (checkpoints, kept supernets, snapshots), measurements, records
        self.files = SearchFiles(self)
        self.measurement = SearchMeasure(self)
        self.records = SearchRecord(self)

    def _check_shards(self) -> None:
        """The ranks agree on the config; what a sharded search cannot do is refused before any work."""
        sh, cfg = self.shards, self.cfg
        if sh.total == 1:
            return
        parallel.check_same(sh, "search config", config_mod.to_dict(cfg))
        if self.method.run is not None:
            raise NasError(f"method {cfg.method!r} trains no supernet: accumulate and several ranks apply to "
                           "supernet searches only")
        if sh.world > 1 and cfg.early_stop:
            raise NasError("early_stop keeps its snapshots in rank 0's folder: not with several ranks "
                           "(accumulate in one process instead)")
        if cfg.batch_size < sh.total:
            raise NasError(f"batch_size {cfg.batch_size} cannot be cut into {sh.total} micro-batches "
                           f"({sh.world} ranks x accumulate {sh.accumulate})")

    # ----------------------------------------------------------------- set-up
    def streams(self) -> tuple[DataBundle, BatchStream, BatchStream]:
        """The search data: the bundle, the w split's and the α split's batch streams."""
        bundle, w_stream, a_stream = search_streams(self.cfg, self.device)
        self.bundle = bundle
        self.data_sha256 = bundle.prepared.manifest["sha256"]
        return bundle, w_stream, a_stream

    def build_state(self, bundle: DataBundle) -> SearchState:
        """A fresh supernet, architecture and optimisers, seeded from the config."""
        cfg = self.cfg
        seed_everything(cfg.seed)
        model = Supernet(self.space, cfg.channels, cfg.cells, bundle.num_classes, bundle.channels,
                         self.method.partial_channels).to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        arch = Architecture(self.space, self.method.edge_norm,
                            generator_for(cfg.seed, rng_stream("alpha-init"))).to(self.device)
        if cfg.fix_alpha:
            with torch.no_grad():
                arch.alpha.zero_()  # uniform mixing weights, never trained
        w_opt = self._w_optimizer(model)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=cfg.epochs, eta_min=cfg.w_lr_min)
        a_opt = torch.optim.Adam(arch.parameters(), lr=cfg.a_lr, betas=(cfg.a_beta1, cfg.a_beta2),
                                 weight_decay=self.method.a_weight_decay)
        return SearchState(model, arch, w_opt, a_opt, sched, 0, [],
                           precision=self.precision, compile=cfg.compile,
                           w_scaler=self.precision.scaler(), a_scaler=self.precision.scaler())

    def _w_optimizer(self, model: nn.Module) -> torch.optim.SGD:
        cfg = self.cfg
        return torch.optim.SGD(model.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                               weight_decay=cfg.w_weight_decay)

    def stage_at(self, epoch: int) -> tuple[int, int]:
        """(stage index, epoch within the stage) of a search epoch; later epochs (PT's fine-tuning)
        belong to the last stage."""
        i = max(k for k, start in enumerate(self.stage_starts) if epoch >= start)
        return i, epoch - self.stage_starts[i]

    def enter_stage(self, st: SearchState, index: int, prune: bool = True) -> None:
        """Apply what stage ``index`` changes: prune each edge to its strongest ops and pass more
        channels through the mixed ops; the w optimiser's momentum is widened the same way.
        ``prune=False`` (resuming): only the shapes change, the values come from a checkpoint."""
        stage = self.stages[index]
        if prune and stage.keep_ops is not None:
            st.arch.prune(stage.keep_ops)
        if stage.partial_channels is None:
            return
        gen = generator_for(self.cfg.seed, rng_stream("widen"))
        changes: dict[int, tuple] = {}
        for cell in st.model.search_cells():
            changes.update(cell.widen(stage.partial_channels, gen))
        if self.cfg.channels_last:
            st.model.to(memory_format=torch.channels_last)  # in place: parameters keep their identity
        old_opt, old_sched = st.w_opt, st.sched
        old_state = {id(p): old_opt.state.get(p, {}) for g in old_opt.param_groups for p in g["params"]}
        new_of = {id(v[0]): (k, v) for k, v in changes.items()}
        st.w_opt = self._w_optimizer(st.model)
        st.w_opt.param_groups[0]["lr"] = old_opt.param_groups[0]["lr"]
        for p in st.w_opt.param_groups[0]["params"]:
            if id(p) in new_of:
                old_id, (_, grow) = new_of[id(p)]
                buf = old_state.get(old_id, {}).get("momentum_buffer")
                if buf is not None:
                    st.w_opt.state[p]["momentum_buffer"] = grow(buf)
            elif old_state.get(id(p)):
                st.w_opt.state[p] = old_state[id(p)]
        st.sched = torch.optim.lr_scheduler.CosineAnnealingLR(st.w_opt, T_max=self.cfg.epochs, eta_min=self.cfg.w_lr_min)
        st.sched.load_state_dict(old_sched.state_dict())

    def steps_per_epoch(self, w_stream: BatchStream) -> int:
        cfg = self.cfg
        return len(w_stream) if cfg.steps_per_epoch <= 0 else min(cfg.steps_per_epoch, len(w_stream))

    # ----------------------------------------------------------------- checkpoints
    # ----------------------------------------------------------------- the loop
    def run(self, resume: bool = False, callback: Callable[[SearchState], None] | None = None,
            force: bool = False) -> dict[str, Any]:
        """Search, writing into ``cfg.out``.  A folder that already holds a run is continued with
        ``resume``, started over with ``force``, and otherwise refused.  A method with a search of
        its own (``Method.run``: a baseline that trains no supernet) runs that instead."""
        with contextlib.ExitStack() as held:
            # rank 0 holds the folder; a refusal there is raised on every rank
            self.shards.agree(lambda: held.enter_context(claim(self.out, resume, force, SEARCH_RUN_FILES, "search")),
                              "claiming the run folder")
            if self.method.run is not None:
                return self.method.run(self, resume=resume)
            return self._run(resume, callback)

    def _run(self, resume: bool, callback: Callable[[SearchState], None] | None) -> dict[str, Any]:
        cfg = self.cfg
        bundle, w_stream, a_stream = self.streams()
        st = self.build_state(bundle)
        ck = self.files.resume(resume)
        if ck is not None:
            self.files.load(st, ck)
        main = self.shards.main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        steps = self.steps_per_epoch(w_stream)
        bar = progress_bar(cfg.progress and main, total=cfg.epochs * steps, initial=st.epoch * steps,
                           desc=f"search epoch {min(st.epoch + 1, cfg.epochs)}/{cfg.epochs}")
        try:
            while st.epoch < cfg.epochs and st.early_stop is None:
                record = self.run_epoch(st, w_stream, a_stream, steps, bar)
                if cfg.hessian_every and (st.epoch + 1) % cfg.hessian_every == 0:
                    record.update(self.measurement.hessian(st, a_stream))
                st.history.append(record)
                st.epoch += 1
                st.sched.step()
                if st.epoch in self.stage_starts[1:]:
                    self.enter_stage(st, self.stage_starts.index(st.epoch))  # before the checkpoint
                if main:
                    log_line(bar, epoch_line(record, cfg.epochs, self.space), run_label(self.out))
                if bar is not None:
                    bar.set_description(f"search epoch {min(st.epoch + 1, cfg.epochs)}/{cfg.epochs}", refresh=False)
                    bar.set_postfix_str(f"val acc {100 * record['val_acc']:.1f}%")
                rollback = self.files.early_stop(st)
                if rollback is not None:
                    log_line(bar, f"early stop at epoch {st.epoch}: the top eigenvalue grew by more than "
                                  f"{cfg.es_factor}x; returning the architecture of epoch {rollback}")
                    self.files.save(st)
                    break
                keep = bool(cfg.keep_every) and st.epoch % cfg.keep_every == 0
                if st.epoch % cfg.checkpoint_every == 0 or st.epoch == cfg.epochs or keep:
                    self.files.save(st)
                if keep and main:
                    self.files.keep(st.epoch)
                if callback is not None and main:
                    callback(st)
        finally:
            if bar is not None:
                bar.close()
        return self.records.result(st, a_stream)

    def mix(self, st: SearchState, epoch: int, gen: torch.Generator | None) -> Mix:
        """The training-time mixing weights of the current architecture."""
        m = self.method.mixing.sample(st.arch.alpha, st.arch.active_mask(), epoch, self.cfg.epochs, gen)
        scale = st.arch.edge_scale()
        if scale is not None:
            m.edge_scale = scale
        return st.arch.override(m)

    def expected_mix(self, st: SearchState, alpha: torch.Tensor | None = None) -> Mix:
        """Deterministic mixing weights (differentiable in ``alpha``), with decided edges one-hot."""
        a = st.arch.alpha if alpha is None else alpha
        scale = st.arch.edge_scale()
        m = Mix(self.method.mixing.expected(a, st.arch.active_mask()), mask=st.arch.active_mask(),
                edge_scale=None if scale is None else scale.detach())
        return st.arch.override(m)

    def expected(self, st: SearchState) -> torch.Tensor:
        """``expected_mix``'s weights on the CPU, without gradient."""
        with torch.no_grad():
            return self.expected_mix(st).weights.cpu()

    def run_epoch(self, st: SearchState, w_stream: BatchStream, a_stream: BatchStream, steps: int, bar: Any = None,
                  *, epoch: int | None = None, alpha: bool = True) -> dict[str, Any]:
        """One epoch of ``steps`` (α step, w step) pairs; returns its history record.  ``epoch``
        (default ``st.epoch``) seeds its randomness and schedules; ``alpha=False`` trains w only.
        With several shards (ranks, micro-batches) each step runs on this rank's slices of the
        global batches and the epoch's sums are totalled over the ranks."""
        cfg, sh = self.cfg, self.shards
        t0 = time.perf_counter()
        epoch = st.epoch if epoch is None else epoch
        # Every random draw of an epoch derives from (seed, epoch): a resumed run repeats them.
        torch.manual_seed(generator_for(cfg.seed, epoch, rng_stream("epoch-global")).initial_seed())
        gen_w = generator_for(cfg.seed, epoch, rng_stream("epoch-w-batches"), device=self.device)
        gen_a = generator_for(cfg.seed, epoch, rng_stream("epoch-a-batches"), device=self.device)
        gen_m = generator_for(cfg.seed, epoch, rng_stream("epoch-mixing"), device=self.device)
        a_iter = _cycle(a_stream, gen_a)
        stage, stage_epoch = self.stage_at(epoch)
        train_alpha = alpha and self.train_alpha and stage_epoch >= self.stages[stage].warmup
        ctx = _StepContext(epoch, train_alpha, [p for p in st.arch.parameters()], self._shard_generators(epoch, gen_m),
                           self._shard_random(epoch))
        step_fn = self._step if sh.total == 1 else self._sharded_step
        st.model.train()
        sums = torch.zeros(4, device=self.device)  # train loss, train correct, val loss, val correct
        counts = [0, 0]
        lr = st.w_opt.param_groups[0]["lr"]
        for step, w_batch in enumerate(w_stream.epoch(gen_w)):
            if step >= steps or len(w_batch[1]) < sh.total:  # sharded: a last batch too small to cut ends the epoch
                break
            a_batch = next(a_iter)
            while len(a_batch[1]) < sh.total:  # ... and an α batch too small is passed over
                a_batch = next(a_iter)
            part, n_w, n_a = step_fn(st, ctx, w_batch, a_batch)
            sums += part
            counts[0] += n_w
            counts[1] += n_a
            if cfg.dist_check:
                self._check_ranks(st, epoch, step)
            if bar is not None:
                bar.update(1)
        if sh.world > 1:
            totals = torch.tensor(counts, dtype=torch.float64, device=self.device)
            sh.sum_([sums])
            sh.sum_([totals])
            counts = [int(c) for c in totals.tolist()]
            if cfg.bn_sync:
                self._average_bn_stats(st)
        return self.records.epoch(st, epoch, stage, train_alpha, sums.tolist(), counts, lr, t0)

    def _average_bn_stats(self, st: SearchState) -> None:
        """``bn_sync``: every rank's batch-norm running statistics become their mean over the ranks."""
        stats = [b for name, b in st.model.named_buffers() if name.endswith(("running_mean", "running_var"))]
        self.shards.sum_(stats)
        with torch.no_grad():
            for b in stats:
                b.div_(self.shards.world)

    def _shard_generators(self, epoch: int, gen_m: torch.Generator) -> dict[int, torch.Generator]:
        """Each of this rank's micro-batches' mixing stream; micro-batch 0 keeps the search's own."""
        return {j: gen_m if j == 0 else
                generator_for(self.cfg.seed, epoch, rng_stream("epoch-mixing"), j, device=self.device)
                for j in self.shards.mine()}

    def _shard_random(self, epoch: int) -> parallel.ShardRandom:
        seeds = {j: generator_for(self.cfg.seed, epoch, rng_stream("epoch-global"), j).initial_seed()
                 for j in self.shards.mine() if j != 0}
        return parallel.ShardRandom(seeds, self.device)

    def _check_ranks(self, st: SearchState, epoch: int, step: int) -> None:
        """``dist_check``: every rank's architecture parameters are rank 0's, bit for bit."""
        mine = torch.cat([p.detach().reshape(-1) for p in st.arch.parameters()]).cpu()
        values = self.shards.gather(mine)
        for rank, other in enumerate(values[1:], start=1):
            if not torch.equal(other, values[0]):
                raise parallel.RankMismatch(
                    f"dist_check: rank {rank}'s α differs from rank 0's after step {step + 1} of epoch {epoch + 1} "
                    f"(largest difference {(other - values[0]).abs().max().item():.3g})")

    def _step(self, st: SearchState, ctx: _StepContext, w_batch: tuple[torch.Tensor, torch.Tensor],
              a_batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """One (α step, w step) pair on whole batches: the step's four sums and the two batch sizes."""
        def mix() -> Mix:
            return self.mix(st, ctx.epoch, ctx.gens[0])

        if ctx.train_alpha:
            loss_v, logits_v = self._alpha_step(st, mix, ctx.arch_params, w_batch, a_batch)
        else:
            with torch.no_grad():
                logits_v = st.forward(a_batch[0], mix())
                loss_v = F.cross_entropy(logits_v, a_batch[1])
        loss, logits = self._w_step(st, mix, w_batch, ctx.epoch, ctx.gens[0])
        yw, ya = w_batch[1], a_batch[1]
        with torch.no_grad():
            part = torch.stack([loss * len(yw), (logits.argmax(1) == yw).sum(),
                                loss_v * len(ya), (logits_v.argmax(1) == ya).sum()]).float()
        return part, len(yw), len(ya)

    def _alpha_step(self, st: SearchState, mix: Callable[[], Mix], arch_params: list[torch.Tensor],
                    w_batch: tuple[torch.Tensor, torch.Tensor],
                    a_batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One α step on an α-split batch: first order (mixed precision, through the α scaler) or
        the unrolled second-order gradient (fp32, on the plain module, see ``nas.precision``), plus
        the mixing's penalty.  Returns the validation loss (detached) and logits."""
        method, xa, ya = self.method, a_batch[0], a_batch[1]
        penalty = method.mixing.penalty(st.arch.alpha)
        if method.second_order:
            grads, loss_v, logits_v = unrolled_alpha_grad(st.model, arch_params, mix, w_batch, a_batch, st.w_opt,
                                                          self.cfg.unrolled_eps)
            if penalty is not None:
                grads[0] = grads[0] + torch.autograd.grad(penalty, [st.arch.alpha])[0]
        else:
            logits_v = st.forward(xa, mix())
            loss_v = F.cross_entropy(logits_v, ya)
            total = loss_v if penalty is None else loss_v + penalty
            grads = list(torch.autograd.grad(st.a_scaler.scale(total), arch_params, allow_unused=True))
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, arch_params)]
        self._apply_alpha(st, arch_params, grads)
        return loss_v.detach(), logits_v

    def _apply_alpha(self, st: SearchState, arch_params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        st.a_opt.zero_grad(set_to_none=True)
        for p, g in zip(arch_params, grads):
            p.grad = g
        if self.method.second_order:
            st.a_opt.step()
        else:  # unscales (fp16), skips a step with inf/NaN gradients, adapts the scale
            st.a_scaler.step(st.a_opt)
            st.a_scaler.update()

    # ----------------------------------------------------------------- sharded steps (nas.parallel)
    def _sharded_step(self, st: SearchState, ctx: _StepContext, w_batch: tuple[torch.Tensor, torch.Tensor],
                      a_batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
        """``_step`` on this rank's micro-batches of the global batches, gradients summed over ranks."""
        w_parts, a_parts = self.shards.parts(w_batch), self.shards.parts(a_batch)
        if ctx.train_alpha:
            val = self._sharded_alpha_step(st, ctx, w_parts, a_parts)
        else:
            val = torch.zeros(2, device=self.device)
            with torch.no_grad():
                for j, (xa, ya), _ in a_parts:
                    with ctx.rand.of(j):
                        logits = st.forward(xa, self.mix(st, ctx.epoch, ctx.gens[j]))
                    val += torch.stack([F.cross_entropy(logits, ya) * len(ya), (logits.argmax(1) == ya).sum()]).float()
        train = self._sharded_w_step(st, ctx, w_parts)
        return (torch.cat([train, val]), sum(len(b[1]) for _, b, _ in w_parts),
                sum(len(b[1]) for _, b, _ in a_parts))

    def _sharded_alpha_step(self, st: SearchState, ctx: _StepContext, w_parts: list, a_parts: list) -> torch.Tensor:
        """The α step over micro-batches: each one's gradient weighted by its share of the global
        batch (second order: its own unrolled gradient), summed over the ranks, the penalty once."""
        method = self.method
        grads = [torch.zeros_like(p) for p in ctx.arch_params]
        stats = torch.zeros(2, device=self.device)
        for (j, wb, _), (_, ab, share) in zip(w_parts, a_parts):
            with ctx.rand.of(j):
                mix = functools.partial(self.mix, st, ctx.epoch, ctx.gens[j])
                if method.second_order:
                    g, loss_v, logits_v = unrolled_alpha_grad(st.model, ctx.arch_params, mix, wb, ab, st.w_opt,
                                                              self.cfg.unrolled_eps)
                    g = [x * share for x in g]
                else:
                    logits_v = st.forward(ab[0], mix())
                    loss_v = F.cross_entropy(logits_v, ab[1])
                    g = torch.autograd.grad(st.a_scaler.scale(loss_v * share), ctx.arch_params, allow_unused=True)
            for acc, x in zip(grads, g):
                if x is not None:
                    acc += x
            with torch.no_grad():
                stats += torch.stack([loss_v.detach() * len(ab[1]), (logits_v.argmax(1) == ab[1]).sum()]).float()
        self.shards.sum_(grads)
        penalty = method.mixing.penalty(st.arch.alpha)
        if penalty is not None:
            scaled = penalty if method.second_order else st.a_scaler.scale(penalty)
            grads[0] = grads[0] + torch.autograd.grad(scaled, [st.arch.alpha])[0]
        self._apply_alpha(st, ctx.arch_params, grads)
        return stats

    def _sharded_w_step(self, st: SearchState, ctx: _StepContext, w_parts: list) -> torch.Tensor:
        """The w step over micro-batches: each one's (perturbed) loss, weighted by its share, adds
        to the gradients; they are summed over the ranks before clipping and the step."""
        st.w_opt.zero_grad(set_to_none=True)
        stats = torch.zeros(2, device=self.device)
        for j, (xw, yw), share in w_parts:
            with ctx.rand.of(j):
                base = self.mix(st, ctx.epoch, ctx.gens[j]).detach()
                m = self.method.perturbation(base, lambda mm, x=xw, y=yw: F.cross_entropy(st.forward(x, mm), y), ctx.epoch,
                                             self.cfg.epochs, ctx.gens[j])
                logits = st.forward(xw, m)
                loss = F.cross_entropy(logits, yw)
                st.w_scaler.scale(loss * share).backward()
            with torch.no_grad():
                stats += torch.stack([loss.detach() * len(yw), (logits.argmax(1) == yw).sum()]).float()
        self._sum_w_grads(st)
        if self.cfg.grad_clip > 0:
            st.w_scaler.unscale_(st.w_opt)
            nn.utils.clip_grad_norm_(st.model.parameters(), self.cfg.grad_clip)
        st.w_scaler.step(st.w_opt)
        st.w_scaler.update()
        return stats

    def _sum_w_grads(self, st: SearchState) -> None:
        """w's gradients summed over the ranks; a weight no rank used keeps no gradient (SGD skips it,
        as in one process)."""
        if self.shards.world == 1:
            return
        params = list(st.model.parameters())
        used = torch.tensor([float(p.grad is not None) for p in params], device=self.device)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        self.shards.sum_([used, *grads])
        for p, g, u in zip(params, grads, used.tolist()):
            p.grad = g if u else None

    def _w_step(self, st: SearchState, mix: Callable[[], Mix], w_batch: tuple[torch.Tensor, torch.Tensor],
                epoch: int, gen_m: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One w step on detached mixing weights, perturbed by the method's perturbation; gradient
        clipping after unscaling.  Returns the training loss (detached) and logits."""
        xw, yw = w_batch
        m = self.method.perturbation(mix().detach(), lambda mm: F.cross_entropy(st.forward(xw, mm), yw), epoch,
                                     self.cfg.epochs, gen_m)
        st.w_opt.zero_grad(set_to_none=True)
        logits = st.forward(xw, m)
        loss = F.cross_entropy(logits, yw)
        st.w_scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            st.w_scaler.unscale_(st.w_opt)
            nn.utils.clip_grad_norm_(st.model.parameters(), self.cfg.grad_clip)
        st.w_scaler.step(st.w_opt)
        st.w_scaler.update()
        return loss.detach(), logits

def _cycle(stream, gen):
    while True:
        yield from stream.epoch(gen)


def epoch_line(record: dict[str, Any], epochs: int, space: Any) -> str:
    """One search epoch in under 100 characters: losses, accuracies (%), eigenvalue, skip edges."""
    skips = str(record.get("genotype", "")).count("skip_connect")
    line = (f"epoch {record['epoch']}/{epochs}  train {record['train_loss']:.3f} / {100 * record['train_acc']:.1f}%  "
            f"val {record['val_loss']:.3f} / {100 * record['val_acc']:.1f}%")
    if isinstance(record.get("hessian_eig"), (int, float)):
        line += f"  eig {record['hessian_eig']:.3g}"
    return line + f"  skip {skips}/{len(space.edge_ops)}  {record['seconds']:.1f}s"


def search(cfg: config_mod.SearchConfig, resume: bool = False,
           callback: Callable[[SearchState], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Run a search and write ``<out>/result.json`` and ``<out>/checkpoint.pt``; see ``Search.run``
    for ``resume`` and ``force``."""
    with torch_threads(cfg.threads):
        return Search(cfg).run(resume=resume, callback=callback, force=force)
