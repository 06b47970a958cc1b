"""The cross-validation flow: k fold models → mean ± std, ensemble gain, label-issue report.

Not a dvc.yaml stage: it costs K trainings and needs the optional `fold`
column of the split, so it runs on request (`visiontune crossval`) and writes
artifacts/crossval/.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.inputs import train_data
from flows.project import Project
from flows.report import ProgressArtifact, publish_image, publish_markdown, publish_table
from params import CrossvalParams, TrainParams
from tasks.crossval import FoldResult, describe, run_crossval
from tasks.figures import plot_gallery
from tasks.files import write_csv, write_json
from tasks.tune import apply_best_params

ARTIFACTS = "crossval"


@flow(name="crossval", log_prints=True)
def crossval_flow(params: CrossvalParams, train: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = project.artifacts(ARTIFACTS)
    out.mkdir(parents=True, exist_ok=True)
    best_params = project.artifacts("tune") / "best_params.yaml"
    if best_params.is_file():
        train = apply_best_params(best_params, train)
    log = get_run_logger()
    progress = ProgressArtifact("crossval-progress", "folds")

    data = train_data(project)
    score = data.task.decision_metric  # accuracy | map_macro

    def on_fold(result: FoldResult, n_folds: int) -> None:
        log.info(
            "fold %d: %d train / %d held out, %s %.4f",
            result.fold,
            result.n_train,
            result.n_val,
            score,
            result.metrics[score],
        )
        progress(result.fold + 1, n_folds)

    cv = run_crossval(train, params, data, out, on_fold=on_fold)
    folds = pd.DataFrame(
        [
            {"fold": f.fold, "n_train": f.n_train, "n_val": f.n_val, "best_epoch": f.best_epoch + 1}
            | {k: round(v, 4) for k, v in f.metrics.items() if isinstance(v, float)}
            for f in cv.folds
        ]
    )
    write_csv(folds, out / "folds.csv")
    write_csv(cv.oof, out / "oof_predictions.csv")
    write_csv(cv.label_issues, out / "label_issues.csv")
    summary = cv.summary | {"ensemble": cv.ensemble}
    write_json(summary, out / "summary.json")
    lines = [f"- {line}" for line in describe(cv.summary, cv.ensemble)]
    publish_markdown(
        "crossval-summary",
        f"# cross-validation ({len(cv.folds)} folds)\n\n"
        + "\n".join(lines)
        + "\n\n"
        + folds.to_markdown(index=False),
    )
    if len(cv.label_issues):
        rows = cv.label_issues.assign(
            gallery=[data.task.issue_caption(r) for r in cv.label_issues.itertuples()]
        ).head(32)
        title = "label issues: the out-of-fold prediction disagrees"
        plot_gallery(rows, project.artifacts("clean"), title, out / "label_issues.png")
        publish_table("crossval-label-issues", cv.label_issues)
        publish_image("crossval-label-issues-gallery", out / "label_issues.png", "label issues")
    return summary
