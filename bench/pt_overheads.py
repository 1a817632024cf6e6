"""What PT pays around its measurements on a DARTS-space supernet, side by side in one run: the
mode switches around each measurement (``Module.train``/``eval`` against ``nas.utils.set_training``)
and the checkpoint after each decision (the whole training state against the architecture alone,
which is what an untuned PT stores), each beside one supernet forward at PT's batch.

    python bench/pt_overheads.py                     # DARTS space, C=8, 3 cells, batch 8
    python bench/pt_overheads.py --space s2 --channels 4

Times are medians over interleaved repeats after a warm-up; the checkpoints are written to a
temporary folder with the project's writer (``nas.runs.files.torch_save``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nas.config import build_config
from nas.runs.files import torch_save
from nas.search import Search
from nas.utils import set_training


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="darts")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--cells", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build_config("search", overrides=dict(space=args.space, dataset="digits", channels=args.channels,
                                                    cells=args.cells, device="cpu", progress=False,
                                                    cache_dir=str(Path(tmp) / "cache"), out=str(Path(tmp) / "run")))
        search = Search(cfg)
        bundle, _, a_stream = search.streams()
        st = search.build_state(bundle)
        x, _ = next(iter(bundle.stream(a_stream.indices, args.batch, augment=False).epoch(None, shuffle=False)))
        mix = search.expected_mix(st)
        modules = len(list(st.model.modules()))

        def forward():
            with torch.no_grad():
                st.forward(x, mix)

        def walks():
            st.model.eval()
            st.model.train()

        def flat():
            set_training(st.model, False)
            set_training(st.model, True)

        ck = Path(tmp) / "pt-checkpoint.pt"
        rows = {"one supernet forward": forward, "Module.eval() + train()": walks, "set_training x2 (flat)": flat,
                "checkpoint: training state": lambda: torch_save(ck, {"decisions": [], **st.train_state()}),
                "checkpoint: architecture only": lambda: torch_save(ck, {"decisions": [], "arch": st.arch.state_dict()})}
        for fn in rows.values():  # warm-up
            fn()
        med = {name: [] for name in rows}
        for _ in range(args.repeats):  # interleaved
            for name, fn in rows.items():
                med[name].append(_median_seconds(fn, 1))
        sec = {name: statistics.median(v) for name, v in med.items()}
    base = sec["one supernet forward"]
    print(f"{args.space} supernet, C={args.channels}, {args.cells} cells, {modules} modules, batch {args.batch}, "
          f"1 thread, median of {args.repeats}")
    print(f"{'':32s} {'ms':>9s} {'x forward':>10s}")
    for name, s in sec.items():
        print(f"{name:32s} {1000 * s:9.2f} {s / base:10.3f}")
    print(f"mode switches: flat pass {sec['Module.eval() + train()'] / sec['set_training x2 (flat)']:.1f}x faster; "
          f"checkpoint: architecture only {sec['checkpoint: training state'] / sec['checkpoint: architecture only']:.1f}x"
          " faster")


if __name__ == "__main__":
    main()
