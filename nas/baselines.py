"""The random-search baseline: sample architectures uniformly, train each from scratch briefly
on the w split, and keep the one with the best accuracy on the α split.

It trains no supernet, so it is not a method of the search loop; it reuses the discrete
training loop of ``nas.train``.  Progress is checkpointed after every candidate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from nas import config as config_mod
from nas.precision import Runner
from nas.train import evaluate, train_epoch
from nas.utils import generator_for, seed_everything, torch_save, write_json

if TYPE_CHECKING:  # pragma: no cover
    from nas.search import Search


def random_search(search: Search, resume: bool = False) -> dict[str, Any]:
    from nas.search import CHECKPOINT, RESULT, _log, _progress

    cfg, space, device = search.cfg, search.space, search.device
    bundle, w_stream, a_stream = search._data()
    eval_stream = bundle.stream(a_stream.indices, cfg.eval_batch_size, augment=False)
    candidates: list[dict[str, Any]] = []
    ck_path = search.out / CHECKPOINT
    if resume and ck_path.is_file():
        candidates = list(search.read_checkpoint()["history"])
    search.out.mkdir(parents=True, exist_ok=True)
    gen = generator_for(cfg.seed, 606)
    genotypes = [space.random_genotype(gen) for _ in range(cfg.random_samples)]
    bar = _progress(cfg.progress, total=cfg.random_samples * cfg.random_epochs * len(w_stream),
                    initial=len(candidates) * cfg.random_epochs * len(w_stream), desc="random")
    try:
        for c in range(len(candidates), cfg.random_samples):
            t0 = time.perf_counter()
            geno = genotypes[c]
            seed_everything(cfg.seed * 1000 + c)
            net = space.build_network(geno, cfg.channels, cfg.cells, bundle.num_classes, bundle.channels).to(device)
            if cfg.channels_last:
                net = net.to(memory_format=torch.channels_last)
            opt = torch.optim.SGD(net.parameters(), lr=cfg.w_lr, momentum=cfg.w_momentum,
                                  weight_decay=cfg.w_weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.random_epochs, eta_min=cfg.w_lr_min)
            run, scaler = Runner(net, search.precision, cfg.compile, "network"), search.precision.scaler()
            for e in range(cfg.random_epochs):
                loss, acc = train_epoch(net, w_stream, opt, generator_for(cfg.seed, 607, c, e, device=device),
                                        cfg.grad_clip, 0.0, bar, forward=run, scaler=scaler)
                sched.step()
            val_loss, val_acc = evaluate(run, eval_stream)
            rec = {"candidate": c + 1, "genotype": space.format_genotype(geno), "train_loss": loss,
                   "train_acc": acc, "val_loss": val_loss, "val_acc": val_acc,
                   "seconds": time.perf_counter() - t0}
            candidates.append(rec)
            _log(bar, f"candidate {c + 1}/{cfg.random_samples}  val acc {val_acc:.3f}  {rec['genotype']}")
            torch_save(ck_path, {"format": "nas-search-checkpoint-v1", "config": config_mod.to_dict(cfg),
                                 "data_sha256": search.data_sha256, "epoch": c + 1, "history": candidates})
    finally:
        if bar is not None:
            bar.close()
    best = max(range(len(candidates)), key=lambda i: (candidates[i]["val_acc"], -i))
    geno = space.parse_genotype(candidates[best]["genotype"])
    one_hot = space.genotype_weights(geno)
    result = {
        "space": space.name,
        "method": "random",
        "order": cfg.order,
        "selection": "random",
        "genotype": space.format_genotype(geno),
        **({"genotype_json": space.genotype_json(geno)} if space.genotype_json else {}),
        "ops": list(space.ops),
        "edge_ops": [list(o) for o in space.edge_ops],
        "alpha": None,
        "weights": one_hot.tolist(),
        "method_info": search.method.describe(),
        "dataset": bundle.describe(cfg.dataset),
        "device": str(device),
        "seconds": sum(c["seconds"] for c in candidates),
        "config": config_mod.to_dict(cfg),
        "history": candidates,
    }
    write_json(search.out / RESULT, result)
    return result
