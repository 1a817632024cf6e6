"""``nas-pipeline``: prepare → search → select → retrain → evaluate, as cached Prefect tasks.

Each task calls the library's stage function (``nas.stages``), the same one ``nas`` and
``dvc repro`` run.  A task's cache key is its parameters, the code version and the digests of its
input files, so a rerun with unchanged inputs skips the finished stages and a changed parameter
reruns only the stages downstream of it.  Every stage that runs gets a nested MLflow run under the
pipeline's parent run.

    prefect deployment run 'nas-pipeline/default' -p method=drnas
    python -m flows.pipeline --method drnas --set search.epochs=5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.common import StageFiles, add_set_flag, cache_options, flow_main, not_a_config_error
from nas import config as config_mod
from nas import stages, stopping, tracking, tracking_stages
from nas.runs import jobs

TASK_OPTS: dict[str, Any] = dict(cache_policy=StageFiles(), persist_result=True, result_serializer="json")


def _name(stage: str, cfg: Any, selection: str | None = None) -> str:
    return tracking.stage_run_name(stage, config_mod.to_dict(cfg), getattr(cfg, "method", None)
                                   if stage != "select" else None, selection)


@task(name="prepare", retries=2, retry_delay_seconds=2, retry_condition_fn=not_a_config_error, **TASK_OPTS)
def prepare_task(cfg: dict[str, Any], inputs: list[str] | None = None) -> dict[str, Any]:
    """Decode the dataset once (retried on transient I/O errors, never on a bad config)."""
    m = stages.prepare_stage(config_mod.from_dict("prepare", cfg))
    return {"path": m["path"], "manifest": str(Path(m["path"]).with_suffix(".json")), "dataset": m["dataset"],
            "counts": m["counts"]}


@task(name="search", **TASK_OPTS)
def search_task(cfg: dict[str, Any], inputs: list[str], outputs: list[str] | None = None, track: bool = True,
                parent_run: str | None = None) -> dict[str, Any]:
    """Search the supernet; reports progress per epoch (the artifact ``search-progress``) and logs
    each epoch to MLflow in one batch.  The library prints the per-epoch line, once."""
    scfg = config_mod.from_dict("search", cfg)
    tags = {"stage": "search", "method": scfg.method, "space": scfg.space, "dataset": scfg.dataset, "seed": scfg.seed}
    with tracking.stage_run(_name("search", scfg), tags, parent_run, track) as (tracker, run_id):
        progress_id = create_progress_artifact(progress=0.0, key="search-progress",
                                               description=f"{scfg.method} search on {scfg.space}: epochs done")
        log_epoch = tracking_stages.epoch_logger(tracker, run_id, scfg.space)

        def on_epoch(st: Any) -> None:
            log_epoch(st.history[-1])
            update_progress_artifact(progress_id, progress=100.0 * st.epoch / scfg.epochs)

        res = jobs.run(jobs.Job.of("search", scfg), callback=on_epoch)
        tracking_stages.log_search(tracker, run_id, res, live=True)
    return {"result": str(Path(scfg.out) / "result.json"), "genotype": res["genotype"], "seconds": res["seconds"],
            "mlflow_run": run_id}


@task(name="select", **TASK_OPTS)
def select_task(cfg: dict[str, Any], inputs: list[str], outputs: list[str] | None = None, track: bool = True,
                parent_run: str | None = None) -> dict[str, Any]:
    scfg = config_mod.from_dict("select", cfg)
    with tracking.stage_run(_name("select", scfg, scfg.method), {"stage": "select", "selection": scfg.method,
                                                                 "seed": scfg.seed}, parent_run, track) as (tracker, run_id):
        sel = jobs.run(jobs.Job.selection(scfg))
        tracking_stages.log_selection(tracker, run_id, config_mod.to_dict(scfg), sel)
    return {"selection": str(Path(scfg.out) / "selection.json"), "genotype": sel["genotype"], "mlflow_run": run_id}


@task(name="retrain", **TASK_OPTS)
def retrain_task(cfg: dict[str, Any], inputs: list[str], outputs: list[str] | None = None, track: bool = True,
                 parent_run: str | None = None, run_tags: dict[str, Any] | None = None) -> dict[str, Any]:
    genotype = json.loads(Path(inputs[0]).read_text())["genotype"]
    rcfg = config_mod.from_dict("retrain", {**cfg, "genotype": genotype})
    tags = {"stage": "retrain", "space": rcfg.space, "dataset": rcfg.dataset, "seed": rcfg.seed, "genotype": genotype,
            **(run_tags or {})}
    name = tracking.stage_run_name("retrain", config_mod.to_dict(rcfg), tags.get("method"), tags.get("selection"))
    with tracking.stage_run(name, tags, parent_run, track) as (tracker, run_id):
        res = jobs.run(jobs.Job.of("retrain", rcfg))
        tracking_stages.log_retrain(tracker, run_id, res, Path(rcfg.out) / "model.pt")
    return {"result": str(Path(rcfg.out) / "result.json"), "test_acc": res["test_acc"], "mlflow_run": run_id}


@task(name="evaluate", **TASK_OPTS)
def evaluate_task(search_dir: str, selection: str, retrain_dir: str, out: str, inputs: list[str],
                  outputs: list[str] | None = None) -> dict[str, Any]:
    return stages.evaluate_stage(search_dir, selection, retrain_dir, out)


def summary_markdown(metrics: dict[str, Any], links: dict[str, str | None], ui: str) -> str:
    lines = [f"# nas-pipeline: {metrics['method']} on {metrics['space']}", "",
             f"- genotype: `{metrics['genotype']}`",
             f"- selection: {metrics['selection']}",
             f"- test accuracy after retraining: {100 * metrics['test_acc']:.2f}% ({metrics['retrain_epochs']} epochs)",
             f"- params: {metrics['params']:,}; search {metrics['search_seconds']:.1f} s"]
    if "nb201" in metrics:
        nb = metrics["nb201"]
        lines.append(f"- NAS-Bench-201 test accuracy: CIFAR-10 {nb['cifar10']:.2f} (oracle "
                     f"{metrics['nb201_oracle_cifar10']:.2f}), CIFAR-100 {nb['cifar100']:.2f}, "
                     f"ImageNet16-120 {nb['imagenet16-120']:.2f}")
    for name, run in links.items():
        if run:
            lines.append(f"- MLflow {name} run: [{run}]({ui.rstrip('/')}/{run})")
    return "\n".join(lines) + "\n"


@flow(name="nas-pipeline", log_prints=True)
def pipeline(method: str | None = None, selection: str | None = None, seed: int | None = None,
             params: str = "params/pipeline.yaml", sets: list[str] | None = None, out: str | None = None,
             track: bool = True, refresh: bool = False) -> dict[str, Any]:
    """One pipeline run.  ``sets`` items are ``section.key=value`` (``search.epochs=5``).
    ``refresh`` recomputes every stage even when its cache key is known."""
    cfgs = config_mod.pipeline_configs(params, out or "runs/pipeline", sets, method=method, selection=selection,
                                       seed=seed)
    if out is None:  # one folder per method, seed and selection
        s = cfgs["search"]
        cfgs = config_mod.pipeline_configs(params, f"runs/pipeline/{s.method}-s{s.seed}-{cfgs['select'].method}",
                                           sets, method=method, selection=selection, seed=seed)
    d = {k: config_mod.to_dict(v) for k, v in cfgs.items()}
    root = Path(cfgs["search"].out).parent
    tracker = tracking.tracker(track)
    s = cfgs["search"]
    digest = tracking.config_digest({k: v for k, v in d.items()})
    parent = tracker.start(tracking.run_name("pipeline", s.method, cfgs["select"].method, s.space, s.seed, digest), {
        "stage": "pipeline", "method": s.method, "space": s.space, "dataset": s.dataset, "seed": s.seed,
        "selection": cfgs["select"].method, "config_digest": digest})
    tracker.log_params(parent, {"params_file": params, "sets": " ".join(sets or []), "out": str(root)})
    opts = {"refresh_cache": True} if refresh else {}
    # each stage's outputs: while one is missing the stage runs again instead of answering from cache
    outs = {"search": [str(root / "search" / "result.json")], "select": [str(root / "select" / "selection.json")],
            "retrain": [str(root / "retrain" / "result.json"), str(root / "retrain" / "model.pt")],
            "evaluate": [str(root / "evaluate" / "metrics.json"), str(root / "evaluate" / "summary.json")]}
    try:
        prep = prepare_task.with_options(**opts)(d["prepare"], inputs=[])
        srch = search_task.with_options(**cache_options(outs["search"], refresh))(
            d["search"], inputs=[prep["manifest"]], outputs=outs["search"], track=track, parent_run=parent)
        sel = select_task.with_options(**cache_options(outs["select"], refresh))(
            d["select"], inputs=[srch["result"]], outputs=outs["select"], track=track, parent_run=parent)
        rt = retrain_task.with_options(**cache_options(outs["retrain"], refresh))(
            d["retrain"], inputs=[sel["selection"]], outputs=outs["retrain"], track=track, parent_run=parent,
            run_tags={"method": cfgs["search"].method, "selection": cfgs["select"].method})
        metrics = evaluate_task.with_options(**cache_options(outs["evaluate"], refresh))(
            str(root / "search"), sel["selection"], str(root / "retrain"), str(root / "evaluate"),
            inputs=[srch["result"], sel["selection"], rt["result"]], outputs=outs["evaluate"])
    except BaseException as exc:
        tracker.end(parent, stopping.status(exc))
        raise
    ui = mlflow_ui(tracker)
    tracking_stages.log_summary(tracker, parent, metrics)
    tracker.set_tags(parent, {"search_run": srch["mlflow_run"], "retrain_run": rt["mlflow_run"]})
    tracker.end(parent)
    links = {"pipeline": tracker.url(parent), "search": srch["mlflow_run"] and tracker.url(srch["mlflow_run"]),
             "retrain": rt["mlflow_run"] and tracker.url(rt["mlflow_run"])}
    create_markdown_artifact(key="nas-pipeline-summary", markdown=summary_markdown(metrics, links, ui),
                             description="genotype, NB201 lookup, test accuracy, MLflow links")
    return {**metrics, "out": str(root), "mlflow_run": parent}


def mlflow_ui(tracker: Any) -> str:
    """Where the summary's MLflow links point: ``NAS_MLFLOW_UI``, else the tracking server itself
    (an http(s) tracking URI serves the UI too), else the ``mlflow ui`` of the docs on port 5000."""
    uri = getattr(tracker, "uri", "") or ""
    default = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return os.environ.get("NAS_MLFLOW_UI", default)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description="Run the nas-pipeline flow once.")
    p.add_argument("--method", help="search method (default: the params file's search.method)")
    p.add_argument("--selection", help="magnitude, pt or verify (default: the params file's select.method)")
    p.add_argument("--seed", type=int, help="seed of every stage (default: the params file's)")
    p.add_argument("--params", default="params/pipeline.yaml",
                   help="params file with a section per stage (default params/pipeline.yaml)")
    add_set_flag(p)
    p.add_argument("--out", help="run folder (default runs/pipeline/<method>-s<seed>-<selection>)")
    p.add_argument("--no-track", dest="track", action="store_false", help="no MLflow tracking")
    p.add_argument("--refresh", action="store_true", help="recompute every stage, even a cached one")
    a = p.parse_args(argv)

    def check() -> None:  # a bad params file or key: one line, before any flow or server starts
        config_mod.pipeline_configs(a.params, a.out or "runs/pipeline", a.sets, method=a.method,
                                    selection=a.selection, seed=a.seed)

    def run() -> None:
        res = pipeline(a.method, a.selection, a.seed, a.params, a.sets, a.out, a.track, a.refresh)
        print(json.dumps({"genotype": res["genotype"], "test_acc_percent": round(100 * res["test_acc"], 2),
                          "out": res["out"], "mlflow_run": res["mlflow_run"]}, indent=2))

    return flow_main("python -m flows.pipeline", check, run,
                     "rerun the same command: finished stages are cached, a stopped stage resumes from its checkpoint")


if __name__ == "__main__":
    sys.exit(main())
