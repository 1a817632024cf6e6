"""The random-search baseline: sample architectures uniformly, train each from scratch briefly
on the w split, and keep the one with the best accuracy on the α split.

It trains no supernet: the ``random`` method (``nas.methods.random``) runs this instead of the
search loop, with the loop's data, precision and run folder (``engine``, a ``nas.search.Search``).
It reuses the discrete training loop of ``nas.loops``.  Progress is checkpointed after every
candidate.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from nas.loops import Training, evaluate, train_epoch
from nas.precision import Runner
from nas.progress import log_line, progress_bar
from nas.rng import rng_stream
from nas.rundir import CHECKPOINT_FORMAT, SEARCH_CHECKPOINT, SEARCH_RESULT, search_result
from nas.runs.files import torch_save, write_json
from nas.utils import generator_for, seed_everything


def random_search(search: Any, resume: bool = False) -> dict[str, Any]:
    """Train ``random_samples`` sampled cells briefly and keep the best; writes the run folder's
    ``result.json`` like a search (``resume`` continues after the last finished candidate).
    ``search`` is the ``nas.search.Search`` of the run."""
    cfg, space = search.cfg, search.space
    bundle, w_stream, a_stream = search.streams()
    eval_stream = bundle.stream(a_stream.indices, cfg.eval_batch_size, augment=False)
    candidates: list[dict[str, Any]] = []
    ck_path = search.out / SEARCH_CHECKPOINT
    if resume and ck_path.is_file():
        candidates = list(search.files.read()["history"])
    search.out.mkdir(parents=True, exist_ok=True)
    gen = generator_for(cfg.seed, rng_stream("random-candidates"))
    genotypes = [space.random_genotype(gen) for _ in range(cfg.random_samples)]
    bar = progress_bar(cfg.progress, total=cfg.random_samples * cfg.random_epochs * len(w_stream),
                    initial=len(candidates) * cfg.random_epochs * len(w_stream), desc="random")
    try:
        for c in range(len(candidates), cfg.random_samples):
            rec = train_briefly(search, (bundle, w_stream, eval_stream), genotypes[c], cfg.random_epochs,
                                init_seed=cfg.seed * 1000 + c, batches=("random-batches", c), bar=bar)
            candidates.append({"candidate": c + 1, **rec})
            log_line(bar, f"candidate {c + 1}/{cfg.random_samples}  val acc {100 * rec['val_acc']:.1f}%  {rec['genotype']}")
            torch_save(ck_path, {"format": CHECKPOINT_FORMAT, "config": cfg.model_dump(),
                                 "data_sha256": search.data_sha256, "epoch": c + 1, "history": candidates})
    finally:
        if bar is not None:
            bar.close()
    return _keep_best(search, bundle, candidates, "val_acc", sum(c["seconds"] for c in candidates))


def train_briefly(search: Any, streams: tuple[Any, Any, Any], geno: Any, epochs: int, init_seed: int,
                  batches: tuple[Any, ...], bar: Any = None) -> dict[str, Any]:
    """Train the discrete network of ``geno`` from scratch for ``epochs`` on the w split with the
    search's w optimiser (SGD, cosine-annealed), then measure it on the evaluation stream (the α split);
    ``streams`` is (the data bundle, the w split's stream, the evaluation stream).
    ``init_seed`` seeds the weights; ``batches`` (an RNG stream name and extra keys) the batch order
    of each epoch.  Returns the genotype, the last epoch's train loss/accuracy, the validation
    loss/accuracy and the seconds taken."""
    cfg, space, device = search.cfg, search.space, search.device
    bundle, w_stream, eval_stream = streams
    t0 = time.perf_counter()
    seed_everything(init_seed)
    net = space.build_network(geno, cfg.channels, cfg.cells, bundle.num_classes, bundle.channels).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum, weight_decay=cfg.w_weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=cfg.w_lr_min)
    run, scaler = Runner(net, search.precision, cfg.compile, "network"), search.precision.scaler()
    name, *keys = batches
    loss = acc = float("nan")
    for e in range(epochs):
        gen_e = generator_for(cfg.seed, rng_stream(name), *keys, e, device=device)
        loss, acc = train_epoch(net, w_stream, opt, gen_e, Training(cfg.grad_clip, forward=run, scaler=scaler), bar)
        sched.step()
    val_loss, val_acc = evaluate(run, eval_stream)
    return {"genotype": space.format_genotype(geno), "train_loss": loss, "train_acc": acc, "val_loss": val_loss,
            "val_acc": val_acc, "seconds": time.perf_counter() - t0}


def _keep_best(search: Any, bundle: Any, candidates: list[dict[str, Any]], key: str,
               seconds: float) -> dict[str, Any]:
    """Write the run folder's ``result.json`` for the candidate with the highest ``key`` (ties: the
    first sampled), its one-hot weights standing for α."""
    space = search.space
    best = max(range(len(candidates)), key=lambda i: (candidates[i][key], -i))
    geno = space.parse_genotype(candidates[best]["genotype"])
    result = search_result(search, geno, None, space.genotype_weights(geno).tolist(), seconds, candidates)
    write_json(search.out / SEARCH_RESULT, result)
    return result


# --------------------------------------------------------------------------- NASWOT

def naswot_score(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The training-free score of NASWOT (Mellor et al. 2021): log |K_H|, where K_H[i, j] counts
    the ReLU units of the untrained network on which images i and j of the batch agree (both
    active or both inactive), over every ReLU that the loss depends on (a ReLU whose output reaches
    no loss, behind a ``none`` edge, is left out, as the reference code does with its backward
    hooks)."""
    codes: dict[torch.nn.Module, torch.Tensor] = {}
    reached: set[torch.nn.Module] = set()
    hooks = []

    def forward_hook(module, inputs, output):
        codes[module] = (inputs[0].detach().flatten(1) > 0).float()
        if output.requires_grad:  # called back only when the loss depends on this output
            output.register_hook(lambda grad, m=module: reached.add(m))

    for m in net.modules():
        if isinstance(m, torch.nn.ReLU):
            hooks.append(m.register_forward_hook(forward_hook))
    try:
        net.train()
        logits = net(x)
        logits = logits[0] if isinstance(logits, tuple) else logits
        torch.nn.functional.cross_entropy(logits, y).backward()
    finally:
        for h in hooks:
            h.remove()
    k = torch.zeros(len(x), len(x), dtype=torch.float64, device=x.device)
    for m, c in codes.items():
        if m in reached:
            c = c.double()
            k += c @ c.T + (1 - c) @ (1 - c).T
    return float(torch.linalg.slogdet(k).logabsdet)


def naswot_search(search: Any, resume: bool = False) -> dict[str, Any]:
    """Score ``naswot_samples`` uniformly sampled cells with ``naswot_score`` on one batch of
    ``naswot_batch`` images of the w split and keep the highest; no training at all.  Writes the
    run folder's ``result.json`` like a search; ``resume`` is accepted and starts over (it takes
    seconds)."""
    cfg, space, device = search.cfg, search.space, search.device
    t0 = time.perf_counter()
    bundle, w_stream, _ = search.streams()
    batch_stream = bundle.stream(w_stream.indices, cfg.naswot_batch, cfg.augment)
    x, y = next(iter(batch_stream.epoch(generator_for(cfg.seed, rng_stream("naswot-batch"), device=device))))
    gen = generator_for(cfg.seed, rng_stream("naswot-candidates"))
    candidates = []
    bar = progress_bar(cfg.progress, total=cfg.naswot_samples, initial=0, desc="naswot")
    try:
        for c in range(cfg.naswot_samples):
            geno = space.random_genotype(gen)
            seed_everything(cfg.seed * 1000 + c)
            net = space.build_network(geno, cfg.channels, cfg.cells, bundle.num_classes, bundle.channels).to(device)
            candidates.append({"candidate": c + 1, "genotype": space.format_genotype(geno),
                               "score": naswot_score(net, x, y)})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    search.out.mkdir(parents=True, exist_ok=True)
    result = _keep_best(search, bundle, candidates, "score", time.perf_counter() - t0)
    log_line(None, f"naswot: best of {cfg.naswot_samples} cells, score {max(c['score'] for c in candidates):.2f}: "
                   f"{result['genotype']}")
    return result
