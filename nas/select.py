"""Selecting the final architecture from a finished search: by α magnitude, or by perturbation
(PT, Wang et al. 2021, "Rethinking architecture selection in differentiable NAS").

PT judges an op by how much the supernet's validation accuracy drops when the op is removed,
not by its α.  As in the authors' code, by default the removed op's weight is multiplied by 0
(the edge's other weights unchanged) and accuracy is measured with batch statistics; edges are
decided one at a time in a seeded random order, decided edges stay one-hot, and between
decisions the search goes on (α and w steps, w at a tenth of the search learning rate).  The
select keys ``pt_removal``, ``pt_bn`` and ``pt_tune_alpha`` switch to the variant this project
used first (renormalised weights, running statistics, w-only tuning).
The same removal measurement on the untouched supernet gives the "does α represent operation
strength?" comparison (``op_strength``).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nas import config as config_mod
from nas import parallel
from nas.arch import without_edge, without_op
from nas.rng import rng_stream
from nas.rundir import (
    SEARCH_CHECKPOINT,
    check_resume,
    check_selection_folder,
    claim,
    kept_checkpoint,
    kept_epochs,
    read_search_result,
)
from nas.runs.files import torch_load, torch_save, write_json
from nas.search import Search, SearchState
from nas.spaces import get_space
from nas.utils import (
    NasError,
    ResumeMismatch,
    atomic_write,
    check_output_dir,
    clip,
    generator_for,
    sha256_file,
    write_csv,
)

__all__ = ["load_supernet", "pt_project", "pt_select", "op_strength", "select", "without_op", "without_edge"]


def supernet_checkpoint(run: str | Path, epoch: int = 0) -> Path:
    """The checkpoint a selection reads: the final one, or the one kept at ``epoch``."""
    run = Path(run)
    if not epoch:
        return run / SEARCH_CHECKPOINT
    path = kept_checkpoint(run, epoch)
    if not path.is_file():
        kept = kept_epochs(run)
        raise NasError(f"{path}: no supernet kept at epoch {epoch} (kept: {', '.join(map(str, kept)) or 'none'}; "
                       f"search with keep_every set to keep them)")
    return path


def _shards_for(saved: dict[str, Any]) -> dict[str, int]:
    """The tuning epochs of a selection cut each batch as the search did (its ranks x accumulate)
    where the processes at hand divide that count, so that PT in 1 or 2 processes tunes alike;
    otherwise each process takes the search's accumulate."""
    world = parallel.launched_world()
    total = int(saved.get("nproc", 1)) * int(saved.get("accumulate", 1))
    if total % world == 0:
        return {"nproc": world, "accumulate": total // world}
    return {"nproc": world}


def load_supernet(run: str | Path, device: str = "auto", epoch: int = 0) -> tuple[Search, SearchState, Any, Any, Any]:
    """Rebuild a search's supernet, architecture and data streams from its run directory, as it was
    at the end (or at ``epoch``, when kept): (engine, state, w stream, α stream, unaugmented α-split
    stream for evaluation)."""
    run = Path(run)
    ck_path = supernet_checkpoint(run, epoch)
    if not ck_path.is_file():
        raise NasError(f"{ck_path}: checkpoint not found (expected a run directory written by 'nas search')")
    ck = torch_load(ck_path)
    if not isinstance(ck, dict) or "config" not in ck:
        raise NasError(f"{ck_path}: not a search checkpoint")
    saved = dict(ck["config"])
    saved.update(out=str(run), device=device, progress=False, **_shards_for(saved))
    cfg = config_mod.build_config("search", overrides=saved)
    search = Search(cfg)
    if not search.method.trains_supernet:
        raise NasError(f"{run}: the {search.method.name} baseline trains no supernet to select from")
    bundle, w_stream, a_stream = search.streams()
    st = search.build_state(bundle)
    search.files.load(st, ck)
    val = bundle.stream(a_stream.indices, cfg.eval_batch_size, augment=False)
    return search, st, w_stream, a_stream, val


PT_CHECKPOINT = "pt-checkpoint.pt"
SELECTION = "selection.json"
# select-config keys that may change when an interrupted PT resumes
PT_FREE_KEYS = {"out", "progress", "device", "run"}
# What a selection config written before these keys existed meant: the first PT of this project.
PT_LEGACY = {"pt_removal": "renormalise", "pt_tune_alpha": False, "pt_bn": "running"}


def selection_key(cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys of a select config that decide its selection: the method, epoch and seed, and the
    method's own keys (``pt_*`` for PT, ``verify_*`` for verify)."""
    prefix = f"{cfg.get('method', 'magnitude')}_"
    return {k: v for k, v in cfg.items() if k in ("method", "epoch", "seed") or k.startswith(prefix)}


def same_selection(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a stored selection config (keys older than a setting count as the behaviour
    before it existed) asks for the same selection as ``now``."""
    defaults = {**config_mod.to_dict(config_mod.SelectConfig()), **PT_LEGACY}
    return selection_key({**defaults, **saved}) == selection_key({**defaults, **now})


@dataclass
class PTCheckpoint:
    """Where PT checkpoints its decisions (``path``; None: nowhere), the ``header`` stored with each,
    and the checkpoint an interrupted selection continues from (``resume_from``)."""

    path: Path | None = None
    header: dict[str, Any] | None = None
    resume_from: dict[str, Any] | None = None


def pt_project(search: Search, st: SearchState, val, w_stream, a_stream, cfg: config_mod.SelectConfig,
               saving: PTCheckpoint | None = None, on_step: Any = None) -> tuple[list[dict[str, Any]], list[int]]:
    """The PT loop on a loaded supernet: decide each edge in a seeded random order by the op whose
    removal hurts validation accuracy most, tuning the supernet between decisions.  Mutates ``st``.

    With a checkpoint path, the supernet, the decisions so far and the tuning counter are written
    after every decision (and its fine-tuning), so that ``resume_from`` (that file's content)
    continues exactly where an interrupted selection stopped; ``header`` is stored with it.
    ``on_step(k)`` runs after step k (and its checkpoint)."""
    saving = saving or PTCheckpoint()
    checkpoint, header, resume_from = saving.path, saving.header, saving.resume_from
    space = search.space
    order = torch.randperm(space.alpha_shape[0], generator=generator_for(cfg.seed, rng_stream("pt-order"))).tolist()
    for group in st.w_opt.param_groups:
        group["lr"] = search.cfg.w_lr * cfg.pt_lr_factor
    steps = search.steps_per_epoch(w_stream)
    groups = [g for g in space.edge_groups if len(g) > space.keep_edges_per_node] if space.keep_edges_per_node else []
    plan: list[tuple[str, Any]] = [("edge", e) for e in order] + [("node", g) for g in groups]
    t_start = time.perf_counter()
    decisions, tune_epoch = ([], 0) if resume_from is None else _resume_pt_state(st, resume_from, checkpoint)

    def tune() -> None:
        nonlocal tune_epoch
        for _ in range(cfg.pt_tune_epochs):
            # search epochs (α steps too with pt_tune_alpha, unless α is fixed), with fresh seeded
            # randomness per tuning epoch
            search.run_epoch(st, w_stream, a_stream, steps, None, epoch=search.cfg.epochs + tune_epoch,
                             alpha=cfg.pt_tune_alpha)
            tune_epoch += 1

    for k in range(len(decisions), len(plan)):
        kind, item = plan[k]
        with torch.no_grad():
            base_mix = search.expected_mix(st)
        base = search.measurement.evaluate(st, val, base_mix, cfg.pt_batches, cfg.pt_bn)
        if kind == "edge":
            decision = _decide_edge(search, st, val, cfg, base_mix, base, item)
            msg = (f"PT edge {k + 1}/{len(order)} ({decision['name']}): keep {decision['chosen']} (accuracy "
                   f"{base:.4f}, {decision['acc_without'][decision['chosen']]:.4f} without it)")
        else:  # the topology step (DARTS spaces): per node, keep the edges whose removal hurts most
            decision = _decide_node(search, st, val, cfg, base_mix, base, item)
            msg = f"PT node {k + 1 - len(order)}/{len(groups)}: keep {', '.join(decision['kept'])}"
        decisions.append(decision)
        if cfg.progress and search.shards.main:
            print(msg, file=sys.stderr, flush=True)
        if k < len(plan) - 1:
            tune()
        if checkpoint is not None:
            seconds = float((resume_from or {}).get("seconds", 0.0)) + time.perf_counter() - t_start
            if search.shards.main:  # rank 0 owns the selection's files
                torch_save(checkpoint, {**(header or {}), "format": "nas-pt-checkpoint-v1", "seconds": seconds,
                                        **_pt_train_state(st, tune_epoch), "decisions": decisions,
                                        "tune_epoch": tune_epoch})
        if on_step is not None:
            on_step(k)
    return decisions, order


def _pt_train_state(st: SearchState, tune_epoch: int) -> dict[str, Any]:
    """What a PT checkpoint stores of the training state.  Until the first tuning epoch the supernet
    and its optimisers are still those of the search checkpoint (which the header's digest pins),
    so the architecture with its decisions is all that changed: a checkpoint of a few kilobytes."""
    return st.train_state() if tune_epoch else {"arch": st.arch.state_dict()}


def _resume_pt_state(st: SearchState, resume_from: dict[str, Any], checkpoint: Any) -> tuple[list[dict[str, Any]], int]:
    """The inverse of ``_pt_train_state`` on the supernet loaded from the search checkpoint; the
    decisions so far and the tuning epochs done."""
    decisions, tune_epoch = resume_from.get("decisions"), resume_from.get("tune_epoch")
    if not (isinstance(decisions, list) and all(isinstance(d, dict) for d in decisions)
            and type(tune_epoch) is int and tune_epoch >= 0):
        raise NasError(f"{checkpoint}: expected 'decisions' (a list of PT decisions) and 'tune_epoch' (a count "
                       f"of epochs), got {clip(decisions, 60)} and {clip(tune_epoch, 40)}")
    if "model" in resume_from:
        st.load_train_state(resume_from, checkpoint)  # the search's checkpoint code
    elif tune_epoch == 0 and isinstance(resume_from.get("arch"), dict):
        st.load_arch_state(resume_from["arch"], checkpoint)
    else:
        raise NasError(f"{checkpoint}: a PT checkpoint without the supernet must be from before any tuning "
                       "(tune_epoch 0) and hold the architecture ('arch')")
    return list(decisions), tune_epoch


def _decide_edge(search: Search, st: SearchState, val: Any, cfg: config_mod.SelectConfig, base_mix: Any,
                 base: float, e: int) -> dict[str, Any]:
    """PT's operation step on edge ``e``: keep the op whose removal costs the most accuracy."""
    space, ops = search.space, search.space.edge_ops[e]
    renormalise = cfg.pt_removal == "renormalise"
    accs = {}
    for op_k in st.arch.candidate_ops(e, space.pt_exclude, space.edge_ops):
        accs[ops[op_k]] = search.measurement.evaluate(st, val, without_op(base_mix, e, op_k, renormalise), cfg.pt_batches,
                                          cfg.pt_bn)
    chosen = min(accs, key=lambda op: (accs[op], ops.index(op)))  # removal hurts most
    st.arch.decided[e] = ops.index(chosen)
    return {"edge": e, "name": space.edge_names[e], "base_acc": base, "acc_without": accs, "chosen": chosen}


def _decide_node(search: Search, st: SearchState, val: Any, cfg: config_mod.SelectConfig, base_mix: Any,
                 base: float, group: Any) -> dict[str, Any]:
    """PT's topology step on one node: keep the ``keep_edges_per_node`` edges whose removal costs most."""
    space = search.space
    accs_e = {e: search.measurement.evaluate(st, val, without_edge(base_mix, e), cfg.pt_batches, cfg.pt_bn) for e in group}
    keep = sorted(group, key=lambda e: (accs_e[e], e))[: space.keep_edges_per_node]
    for e in group:
        if e not in keep:
            st.arch.removed[e] = True
    return {"node_edges": [space.edge_names[e] for e in group], "base_acc": base,
            "acc_without_edge": {space.edge_names[e]: a for e, a in accs_e.items()},
            "kept": [space.edge_names[e] for e in sorted(keep)]}


def _pt_header(run: str | Path, cfg: config_mod.SelectConfig) -> dict[str, Any]:
    """What a PT checkpoint must agree with to be resumed: the select config and the search it
    started from (the digest of the search checkpoint)."""
    return {"config": config_mod.to_dict(cfg), "search_sha256": sha256_file(supernet_checkpoint(run, cfg.epoch))}


def _pt_resume_from(run: str | Path, checkpoint: Path | None, header: dict[str, Any],
                    resume: bool) -> dict[str, Any] | None:
    """The PT checkpoint to continue from (checked against this selection and its search), or None."""
    if checkpoint is None or not resume or not checkpoint.is_file():
        return None
    resume_from = torch_load(checkpoint)
    if not isinstance(resume_from, dict) or resume_from.get("format") != "nas-pt-checkpoint-v1":
        raise NasError(f"{checkpoint}: not a PT checkpoint")
    check_resume(checkpoint, resume_from.get("config", {}), header["config"],
                 {**config_mod.to_dict(config_mod.SelectConfig()), **PT_LEGACY}, PT_FREE_KEYS)
    if resume_from.get("search_sha256") != header["search_sha256"]:
        raise ResumeMismatch(f"{checkpoint}: cannot resume, the search in {run} changed since this PT started")
    return resume_from


def pt_select(run: str | Path, cfg: config_mod.SelectConfig, resume: bool = False,
              on_step: Any = None) -> dict[str, Any]:
    """Perturbation-based selection on a finished supernet; returns the decisions and genotype.
    With ``cfg.out`` set, each decided edge is checkpointed there; ``resume`` continues from it."""
    t0 = time.perf_counter()
    search, st, w_stream, a_stream, val = load_supernet(run, cfg.device, cfg.epoch)
    space = search.space
    magnitude = space.format_genotype(space.select_magnitude(search.expected(st)))
    checkpoint = Path(cfg.out) / PT_CHECKPOINT if cfg.out else None
    header = _pt_header(run, cfg)
    resume_from = search.shards.agree(lambda: _pt_resume_from(run, checkpoint, header, resume),
                                      "reading the PT checkpoint")
    if search.shards.world > 1:  # the other ranks receive rank 0's checkpoint
        resume_from = search.shards.broadcast(None if resume_from is None else parallel.to_cpu(resume_from))
    if resume_from is not None:
        t0 -= float(resume_from.get("seconds", 0.0))
    decisions, order = pt_project(search, st, val, w_stream, a_stream, cfg,
                                  PTCheckpoint(checkpoint, header, resume_from), on_step)
    geno = space.select_magnitude(search.expected(st))
    return {
        "space": space.name,
        "selection": "pt",
        "genotype": space.format_genotype(geno),
        **({"genotype_json": space.genotype_json(geno)} if space.genotype_json else {}),
        "magnitude_genotype": magnitude,
        "search_method": search.method.name,
        "run": str(run),
        "epoch": st.epoch,
        "decisions": decisions,
        "edge_order": order,
        "tune_epochs": cfg.pt_tune_epochs,
        "removal": cfg.pt_removal,
        "bn": cfg.pt_bn,
        "tune_alpha": cfg.pt_tune_alpha and search.train_alpha,
        "final_val_acc": search.measurement.evaluate(st, val, search.expected_mix(st), cfg.pt_batches, cfg.pt_bn),
        "seconds": time.perf_counter() - t0,
    }


def op_strength(run: str | Path, cfg: config_mod.SelectConfig, out: str | Path | None = None) -> dict[str, Any]:
    """Per edge and op: the mixing weight against the validation accuracy lost when the op is
    removed from the untouched supernet; with Spearman's rank correlation between the two."""
    from scipy.stats import spearmanr

    if out is not None:
        check_output_dir(out)  # before the measurements, not after them
    search, st, _, _, val = load_supernet(run, cfg.device, cfg.epoch)
    space = search.space
    with torch.no_grad():
        mix = search.expected_mix(st)
    base = search.measurement.evaluate(st, val, mix, cfg.pt_batches, cfg.pt_bn)
    rows = []
    for e, name in enumerate(space.edge_names):
        for k in st.arch.candidate_ops(e):
            acc = search.measurement.evaluate(st, val, without_op(mix, e, k, cfg.pt_removal == "renormalise"), cfg.pt_batches,
                                  cfg.pt_bn)
            rows.append({"edge": name, "op": space.edge_ops[e][k], "alpha": float(st.arch.alpha[e, k].detach()),
                         "weight": float(mix.weights[e, k]), "acc_without": acc, "drop": base - acc})
    weights, drops = [r["weight"] for r in rows], [r["drop"] for r in rows]
    if len(set(weights)) > 1 and len(set(drops)) > 1:
        rho = spearmanr(weights, drops)
        stat, p_value = float(rho.statistic), float(rho.pvalue)
    else:  # undefined when every weight (or every drop) is the same
        stat = p_value = float("nan")
    summary = {"run": str(run), "removal": cfg.pt_removal, "bn": cfg.pt_bn, "base_acc": base,
               "spearman": stat, "p_value": p_value,
               "rows": rows}
    if out is not None:
        out = Path(out)
        write_csv(out / "strength.csv", rows)
        write_json(out / "strength.json", summary)
        scatter(out / "strength.png", rows, f"{search.method.name}: weight vs accuracy drop "
                                            f"(Spearman {summary['spearman']:.2f})")
    return summary


def scatter(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ops = sorted({r["op"] for r in rows})
    for op in ops:
        pts = [r for r in rows if r["op"] == op]
        ax.scatter([r["weight"] for r in pts], [100 * r["drop"] for r in pts], label=op, s=22)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("mixing weight (softmax α or Dirichlet mean)")
    ax.set_ylabel("validation accuracy drop when removed (points)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)


def _epoch_record(res: dict[str, Any], cfg: config_mod.SelectConfig) -> dict[str, Any]:
    for h in res.get("history", []):
        if h.get("epoch") == cfg.epoch:
            return h
    raise NasError(f"{cfg.run}: the search has no epoch {cfg.epoch} (it ran {len(res.get('history', []))} epochs)")


def select(cfg: config_mod.SelectConfig, resume: bool = False, force: bool = False,
           on_step: Any = None) -> dict[str, Any]:
    """The selection stage: ``magnitude`` re-derives the genotype from result.json; ``pt`` runs PT.

    With ``cfg.out``, the folder is checked and claimed before any work starts; PT checkpoints each
    decided edge there (``pt-checkpoint.pt``): an interrupted PT is continued with ``resume``,
    started over with ``force``, and a second PT into the same folder is otherwise refused."""
    if not cfg.run:
        raise NasError("select: key 'run' is required (a search run directory)")
    res = read_search_result(cfg.run)  # checked (schema, finite weights) before anything is claimed
    from nas.methods import REGISTRY, trains_alpha
    from nas.verify import VERIFY_CHECKPOINT, verify_select

    if cfg.method in ("pt", "verify") and res.get("method") in REGISTRY and not trains_alpha(res["method"]):
        raise NasError(f"{cfg.run}: a {res['method']} run trains no supernet, so {cfg.method} has nothing to select "
                       f"from; its cell ({res['genotype']}) is its own selection")
    if cfg.out and cfg.method != "magnitude" and Path(cfg.out).resolve() == Path(cfg.run).resolve():
        raise NasError(f"select: out {cfg.out} is the search's own folder; give the {cfg.method} selection a folder "
                       f"of its own (its checkpoints would sit among the search's files)")

    if cfg.out and not force:
        check_selection_folder(cfg.out, cfg.method)
    main = parallel.env_rank() == 0  # rank 0 owns the selection's folder and files
    if parallel.launched_world() > 1 and cfg.method != "pt":
        raise NasError(f"select: {cfg.method} runs in one process; several processes spread PT only")
    lock = (claim(cfg.out, resume, force, (PT_CHECKPOINT, VERIFY_CHECKPOINT), "selection") if cfg.out and main
            else nullcontext())
    with lock:
        if cfg.method == "magnitude":
            if res.get("selection") != "magnitude":  # the method chose its architecture by other means
                raise NasError(f"{cfg.run}: searched with {res['selection']!r}, which trains no α; its architecture "
                               f"({res['genotype']}) was selected by {res['selection']}, not by magnitude")
            space = get_space(res["space"])
            weights = torch.tensor(res["weights"] if not cfg.epoch else _epoch_record(res, cfg)["weights"])
            sel = {"space": space.name, "selection": "magnitude",
                   "genotype": space.format_genotype(space.select_magnitude(weights)),
                   "run": str(cfg.run), "search_method": res.get("method"),
                   **({"epoch": cfg.epoch} if cfg.epoch else {})}
        elif cfg.method == "pt":
            sel = pt_select(cfg.run, cfg, resume=resume, on_step=on_step)
        elif cfg.method == "verify":
            sel = verify_select(cfg, resume=resume)
        else:
            raise NasError(f"select: unknown method {cfg.method!r} (expected magnitude, pt or verify)")
        if cfg.out and main:
            write_json(Path(cfg.out) / SELECTION, sel)
    return sel
