"""Ablations (paper Table 4, §4.4) and this project's design decisions (DESIGN.md), as variants.

A variant is a list of `--set` overrides applied after the dataset preset, `--config` and the
user's `--set`, so it composes with whatever the defaults are. Each (variant, seed) trains with
the same loop as `fsan train` (fsan_cli/train/loop.py) into its own run folder `<out>/<variant>[-seed<k>]/`; its best.pt
(chosen on val) is then scored on the test split and `results.json` is written atomically. A
folder with results.json is finished: a later `fsan ablate` skips it (after checking its settings
are the ones asked for); a folder without one resumes from its last.pt when its config.toml
holds the same settings (`fsan train --resume`), else trains again from scratch.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsan_cli.core.atomic import atomic_write
from fsan_cli.core.device import resolve_device
from fsan_cli.core.errors import FsanError, Interrupted
from fsan_cli.core.output import log, warn
from fsan_cli.core.settings import Settings, load_settings
from fsan_cli.data.datasets import open_store
from fsan_cli.data.store import Store
from fsan_cli.evaluate.report import PAPER_TABLE4
from fsan_cli.evaluate.scoring import check_annotated, score
from fsan_cli.predict.predictor import Predictor
from fsan_cli.train import loop as training

MANIFEST = "ablation.json"
MANIFEST_FORMAT = "fsan-ablation"
RESULTS = "results.json"


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    overrides: tuple[str, ...]
    group: str  # "table4" (the paper's Table 4) or "design" (DESIGN.md decisions)
    what: str  # what the variant changes, one clause


VARIANTS: tuple[Variant, ...] = (
    Variant("full", "full model", (), "table4", "nothing: the reference"),
    Variant("no_grounding", "w/o grounding module", ('model.grounding="mlp"',), "table4",
            "attention pooling on V'' and a 3-layer MLP score every segment instead of eq. 8"),
    Variant("no_sap_loss", "w/o loss on SAP", ("loss.sap=false",), "table4",
            "only L^t trains; the inner and outer losses on the alignment map are off"),
    Variant("no_cross_attention", "w/o cross-modal attention", ("model.cross_attention=false",),
            "table4", "ICIM keeps only self-attention per modality (no eq. 3-4)"),
    Variant("no_inner_attention", "w/o inner-modal attention", ("model.inner_attention=false",),
            "table4", "ICIM keeps only the cross-modal attention"),
    Variant("weights_raw", "weights: raw SC (paper)", ('align.weights="raw"',), "design",
            "eq. 10/12 weight segments by raw SC as the paper writes"),
    Variant("weights_softmax", "weights: softmax(SC/tau)", ('align.weights="softmax"',), "design",
            "eq. 10/12 weight segments by softmax(SC / tau), detached"),
    Variant("sc_p", "SC on raw P", ('align.sc_map="p"',), "design", "eq. 8 reads the raw cosine P"),
    Variant("sc_p_hat", "SC on P^ = (1+P)/2", ('align.sc_map="p_hat"',), "design",
            "eq. 8 reads P^ = (1 + P) / 2"),
    Variant("sc_centered", "SC on centred P", ('align.sc_map="centered"',), "design",
            "eq. 8 reads P minus each token's mean over clips"),
    Variant("outer_literal", "outer loss: literal sign", ('align.outer_form="literal"',), "design",
            "eq. 11 as printed, -log(min P^), which raises the weakest outside response"),
    Variant("outer_lower", "outer loss: lowers min P^", ('align.outer_form="lower"',), "design",
            "eq. 11 as -log(1 - min P^), which lowers the weakest outside response"),
    Variant("inner_sigmoid_sum", "inner loss: sigmoid of sum (paper)",
            ('align.inner_form="sigmoid_sum"',), "design", "eq. 9 as printed, -sigmoid(sum P^)"),
    Variant("inner_log_mean", "inner loss: -log mean P^", ('align.inner_form="log_mean"',),
            "design", "eq. 9 as -log(mean P^ inside)"),
)
BY_NAME = {v.name: v for v in VARIANTS}
GROUPS = {
    "table4": [v.name for v in VARIANTS if v.group == "table4"],
    "design": [v.name for v in VARIANTS if v.group == "design"],
    "all": [v.name for v in VARIANTS],
}
# Table 4's row order: the ablations, then the full model
TABLE4_ORDER = [name for name, _, _ in PAPER_TABLE4]
PAPER_METRICS = {name: metrics for name, _, metrics in PAPER_TABLE4}


def select_variants(spec: str) -> list[Variant]:
    """Variants named by a comma list of names and groups (table4, design, all); full is always in."""
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in BY_NAME:
            names.append(part)
        else:
            raise FsanError(
                f"unknown variant '{part}'",
                f"Use a comma list of: {', '.join(GROUPS)} (groups) or {', '.join(BY_NAME)}",
            )
    if "full" not in names:
        log("Adding the full model: every variant is compared with it")
    chosen = {"full", *names}
    return [v for v in VARIANTS if v.name in chosen]


# ----------------------------------------------------------------------------- planning


@dataclass
class Job:
    """One (variant, seed) run; `same_as` is an earlier job with identical settings."""

    variant: Variant
    seed: int
    folder: Path
    cfg: Settings
    same_as: Job | None = None
    result: dict[str, Any] | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def title(self) -> str:
        return f"{self.variant.name} (seed {self.seed})"


def plan(dataset: str, config_file: Path | None, overrides: list[str], variants: list[Variant],
         seeds: int, out: Path, size: str | None = None, device: str | None = None) -> list[Job]:
    """Resolve every (variant, seed) config; variants whose settings coincide train once."""
    if seeds < 1:
        raise FsanError(f"--seeds must be at least 1, got {seeds}", "Pass --seeds 1 or more")
    base = load_settings(dataset, config_file, overrides, size, device)  # says a default size once
    size = base.train.size
    jobs: list[Job] = []
    seen: dict[str, Job] = {}
    for variant in variants:
        for k in range(seeds):
            seed = base.train.seed + k
            cfg = load_settings(dataset, config_file,
                                [*overrides, *variant.overrides, f"train.seed={seed}"], size)
            folder = out / (variant.name if seeds == 1 else f"{variant.name}-seed{seed}")
            job = Job(variant, seed, folder, cfg)
            key = cfg.to_toml()
            job.same_as = seen.get(key)
            seen.setdefault(key, job)
            jobs.append(job)
    return jobs


def check_models(jobs: list[Job], store: Store) -> None:
    """Every variant's model settings are valid for the store, before anything trains."""
    for job in jobs:
        mc = job.cfg.model_config(int(store.vectors.shape[1]), store.feature_dim)
        if mc.clips != store.clips:
            raise FsanError(
                f"data.clips={mc.clips} but the data at {store.path} has {store.clips} clips",
                f"Pass --set data.clips={store.clips}, or prepare again with --clips {mc.clips}",
            )


def ablate(dataset: str, data_dir: Path, out: Path, config_file: Path | None, overrides: list[str],
           variants: str, seeds: int, overwrite: bool, device_spec: str,
           size: str | None = None) -> tuple[list[Job], Store]:
    """Plan, check and run every (variant, seed) into `out`; the jobs with their results.
    Interrupted, the finished variants are kept: the same command resumes."""
    try:
        jobs = plan(dataset, config_file, overrides, select_variants(variants), seeds, out, size, device_spec)
        device = resolve_device(device_spec)  # before any data is read or generated
        store = open_store(dataset, data_dir, jobs[0].cfg.data.clips)
        check_models(jobs, store)
        open_out(out, dataset, jobs, overwrite)
        run(jobs, store, dataset, device)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted. Finished variants are kept in {out}; run the same command "
                          "again to resume.") from None
    return jobs, store


def check_failed(jobs: list[Job]) -> None:
    failed = [j.title for j in jobs if j.error and j.same_as is None]
    if failed:
        raise FsanError(f"{len(failed)} runs failed: {', '.join(failed)}",
                        "See the warnings above; fix the settings and run again (finished ones are skipped)")


# ----------------------------------------------------------------------------- the out folder


def open_out(out: Path, dataset: str, jobs: list[Job], overwrite: bool) -> None:
    """Claim `out` for this ablation: a new folder, or one an earlier `fsan ablate` of the same
    dataset wrote (resumed); --overwrite removes the folders of the planned jobs first."""
    manifest = out / MANIFEST
    if out.exists() and not out.is_dir():
        raise FsanError(f"{out} is a file", "Choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not manifest.is_file():
            raise FsanError(f"{out} exists and was not written by `fsan ablate`",
                            "Choose another --out")
        info = json.loads(manifest.read_text("utf-8"))
        if info.get("dataset") != dataset:
            raise FsanError(f"{out} holds an ablation of {info.get('dataset')}, not {dataset}",
                            "Choose another --out")
    if overwrite:
        for job in jobs:
            if job.folder.exists():
                shutil.rmtree(job.folder)
        log(f"--overwrite: starting over in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"format": MANIFEST_FORMAT, "version": 1, "dataset": dataset})


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a crash never leaves half a file."""
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=1))


def finished_result(job: Job) -> dict[str, Any] | None:
    """The job's results.json when it is finished with the settings asked for, else None."""
    path = job.folder / RESULTS
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text("utf-8"))
        settings = result["settings"]
    except (ValueError, KeyError, TypeError):
        log(f"{path} is unreadable; training {job.title} again")
        return None
    with contextlib.suppress(FsanError):  # else compared as it is: it differs
        settings = Settings.from_dict(settings, str(path)).to_dict()
    if settings != job.cfg.to_dict():
        diff = [f"{s}.{k}: {settings.get(s, {}).get(k)!r} there, {v!r} now"
                for s, values in job.cfg.to_dict().items() for k, v in values.items()
                if settings.get(s, {}).get(k) != v]
        raise FsanError(
            f"{job.folder} was trained with other settings ({'; '.join(diff[:3]) or 'keys differ'})",
            "Pass --overwrite to start over, or choose another --out",
        )
    return result


# ----------------------------------------------------------------------------- running


def run(jobs: list[Job], store: Store, dataset: str, device: Any, progress: bool = True,
        trainer: Callable[..., dict[str, Any]] | None = None) -> None:
    """Train and score every unfinished job in order; fills job.result (or job.error)."""
    trainer = trainer or training.train
    queries = store.split("test")
    check_annotated(dataset, queries)  # before hours of training
    todo = [j for j in jobs if j.same_as is None]
    for job in jobs:
        if job.same_as is not None:
            log(f"{job.title}: the same settings as {job.same_as.title}; not trained again")
    for job in todo:  # refuses other settings before anything trains
        job.result = finished_result(job)
    for i, job in enumerate(todo, 1):
        if job.result is not None:
            log(f"[{i}/{len(todo)}] skip {job.title}: finished in {job.folder}")
            continue
        resume = (job.folder / "last.pt").is_file() and same_settings(job)
        if resume:
            log(f"[{i}/{len(todo)}] {job.folder} is unfinished; resuming {job.title} from its last checkpoint")
        elif job.folder.exists():
            log(f"[{i}/{len(todo)}] {job.folder} is unfinished; training {job.title} from scratch")
            shutil.rmtree(job.folder)
        log(f"[{i}/{len(todo)}] training {job.title}: {job.variant.label} -> {job.folder}")
        try:
            job.result = train_and_score(job, store, dataset, queries, device, progress, trainer,
                                         resume)
        except FsanError as exc:  # e.g. a diverging loss: the other variants still run
            job.error = str(exc)
            warn(f"{job.title} failed: {exc}")
    for job in jobs:
        if job.same_as is not None:
            job.result, job.error = job.same_as.result, job.same_as.error


def same_settings(job: Job) -> bool:
    """Whether an unfinished run folder was started with the job's settings (so it resumes);
    a train.micro_batch the run chose for itself does not count (settings.FREE_ON_RESUME)."""
    try:
        saved = Settings.from_dict(tomllib.loads((job.folder / "config.toml").read_text("utf-8")))
    except (OSError, ValueError, FsanError):
        return False
    return saved.learning() == job.cfg.learning()


def train_and_score(job: Job, store: Store, dataset: str, queries: list, device: Any,
                    progress: bool, trainer: Callable[..., dict[str, Any]],
                    resume: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    summary = trainer(job.cfg, store, job.folder, device, progress=progress, resume=resume)
    train_s = time.perf_counter() - t0
    # Table 4 compares the networks: each variant's own answers
    predictor = Predictor.load(job.folder / "best.pt", device, span_prior=False)
    rows = predictor.rows(store, queries, job.cfg.eval.top_k)
    metrics, _ = score(dataset, queries, rows)
    result = {
        "variant": job.variant.name,
        "label": job.variant.label,
        "seed": job.seed,
        "overrides": list(job.variant.overrides),
        "dataset": dataset,
        "split": "test",
        "queries": len(queries),
        "metrics": {k: round(v, 4) for k, v in metrics.items()},
        "best_epoch": summary.get("best_epoch"),
        "best_val_miou": summary.get("best_val_miou"),
        "train_seconds": round(train_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "settings": job.cfg.to_dict(),
    }
    write_json(job.folder / RESULTS, result)
    log(f"  {job.title}: test mIoU {metrics['miou']:.2f} in {result['seconds']:.0f} s")
    return result


# ----------------------------------------------------------------------------- aggregating


# ----------------------------------------------------------------------------- rendering


