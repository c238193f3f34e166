"""Study report: `python -m cvae_opt.report --study cvae_re` writes reports/cvae_re/.

index.html (opens offline: plotly.js is written beside it, no CDN), parameter importances by fANOVA and
PED-ANOVA, optimization history, intermediate values, parallel coordinates, contour of the two most
important parameters, slices (each as plotly HTML and matplotlib PNG), trials.csv, best_model.pt,
best_config.yaml and samples.png of the best model. Importance is computed over the parameters every
trial has; with an architecture choice (studies/both.yaml) it is computed per architecture, and the
parameters left out are named.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.artifacts import download_artifact  # noqa: E402
from plotly.offline import get_plotlyjs  # noqa: E402

from .. import importance  # noqa: E402
from ..checkpoints import load_checkpoint  # noqa: E402
from .common import add_checkpoint_trust_args, add_study_args, checkpoint_trust, run_main, study_from_args  # noqa: E402
from ..data import load_validation, local_cache_dir  # noqa: E402
from ..errors import UserError  # noqa: E402
from ..files import atomic_write, atomic_write_text  # noqa: E402
from ..figures import samples_figure, save_figure  # noqa: E402
from ..problems import resolve_problem  # noqa: E402
from ..storage import DEFAULT_ARTIFACTS, artifact_store, mask_url  # noqa: E402
from ..studies import check_study_name  # noqa: E402
from ..trials import best_trial, config_yaml  # noqa: E402

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}img{max-width:100%}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}.note{color:#666}")


@dataclass
class Page:
    """An HTML page written section by section into a folder, with the files it links."""

    out: Path
    sections: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    plotlyjs: bool = False  # plotly.min.js written beside the pages (once per report, atomically)

    def add(self, fragment: str) -> None:
        self.sections.append(fragment)

    def note(self, text: str) -> None:
        self.add(f"<p class=note>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
        self.add(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, title: str, name: str, plotly_fn: Callable[[], Any], mpl_fn: Callable[[], Any],
               size: tuple[float, float] = (8, 5)) -> None:
        """An interactive plotly page and a PNG of the same plot; one that cannot be drawn is a note."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                page = plotly_fn().to_html(include_plotlyjs="directory", full_html=True)
            self._plotlyjs()
            atomic_write_text(self.out / f"{name}.html", page)
        except Exception as exc:
            self.add(f"<h3>{html.escape(title)}</h3><p class=note>not drawn: {html.escape(str(exc))}</p>")
            return
        self.files.append(f"{name}.html")
        png = self._png(mpl_fn, name, size)
        img = f'<a href="{name}.html"><img src="{png}" alt="{html.escape(title)}"></a>' if png else ""
        self.add(f'<h3>{html.escape(title)}</h3><p><a href="{name}.html">interactive version</a></p>{img}')

    def _plotlyjs(self) -> None:
        """plotly.min.js beside the pages, which load it by a relative src (offline, no CDN). Written here,
        not by plotly's write_html, which writes in place and through a symlink left at its path."""
        if not self.plotlyjs:
            atomic_write_text(self.out / "plotly.min.js", get_plotlyjs())
            self.plotlyjs = True

    def _png(self, draw: Callable[[], Any], name: str, size: tuple[float, float]) -> str | None:
        plt.close("all")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some optuna axes refuse tight_layout; the plot is still fine
            try:
                draw()
            except Exception as exc:
                plt.close("all")
                self.note(f"{name}.png not drawn: {exc}")
                return None
            fig = plt.gcf()
            fig.set_size_inches(*size)
            fig.tight_layout()
        atomic_write(self.out / f"{name}.png", lambda fh: fig.savefig(fh, format="png", dpi=90))
        plt.close("all")
        self.files.append(f"{name}.png")
        return f"{name}.png"

    def write(self, title: str, head: list[str], tail: list[str]) -> Path:
        page = (
            f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(head + self.sections + tail) + "</body></html>\n"
        )
        return atomic_write_text(self.out / "index.html", page)


@dataclass
class BestArtifacts:
    """The best trial and what the report wrote for it (best_config.yaml, best_model.pt, samples.png),
    or why a file is missing."""

    trial: optuna.trial.FrozenTrial | None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def best_artifacts(study: optuna.Study, out: Path, storage_url: str, artifacts_dir: str,
                   trust: dict[str, Any] | None = None) -> BestArtifacts:
    """Write the best trial's config and checkpoint, and draw its samples for the first validation
    conditions (only the validation pairs are rebuilt, not the training set). The checkpoint is a file: an
    import path in its config loads only as `trust` (--problem, --latent-type) gives it."""
    try:
        trial = best_trial(study)
    except UserError as exc:
        return BestArtifacts(None, notes=[str(exc)])
    best = BestArtifacts(trial)
    atomic_write_text(out / "best_config.yaml", config_yaml(study, trial, storage_url))
    best.files.append("best_config.yaml")
    aid = trial.user_attrs.get("checkpoint_artifact")
    if not aid:
        best.notes.append(f"trial {trial.number} has no checkpoint artifact (artifacts off or removed); no best_model.pt")
        return best
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "best_model.pt"
        try:
            download_artifact(artifact_store=artifact_store(artifacts_dir), file_path=str(dst), artifact_id=aid)
        except Exception as exc:
            best.notes.append(f"checkpoint of trial {trial.number} not found in {artifacts_dir}: {exc}")
            return best
        atomic_write(out / "best_model.pt", lambda fh: fh.write(dst.read_bytes()))
    best.files.append("best_model.pt")
    model, cfg, _ = load_checkpoint(out / "best_model.pt", **(trust or {}))
    problem = resolve_problem(cfg.data.problem)  # the one load_checkpoint checked
    # the pairs are cached in this working folder's storage/ whatever cache_dir the checkpoint (a file) names:
    # one elsewhere is replaced by storage/data, so a report writes nothing outside (a val_file is only read)
    val = load_validation(dataclasses.replace(cfg.data, cache_dir=local_cache_dir(cfg.data.cache_dir)), problem)
    fig = samples_figure(model, problem, val.y[:4], n_samples=30, seed=0, title=f"best trial {trial.number}", truth=val.x[:4])
    save_figure(fig, out / "samples.png")
    best.files.append("samples.png")
    return best


def history_plots(page: Page, study: optuna.Study, metrics: list[str]) -> None:
    vis, mpl = optuna.visualization, optuna.visualization.matplotlib
    s = study
    if len(s.directions) > 1:
        page.figure("Pareto front", "pareto_front", lambda: vis.plot_pareto_front(s, target_names=metrics),
                    lambda: mpl.plot_pareto_front(s, target_names=metrics))
        return
    m = metrics[0]
    page.figure("Optimization history", "history", lambda: vis.plot_optimization_history(s, target_name=m),
                lambda: mpl.plot_optimization_history(s, target_name=m))
    if any(t.intermediate_values for t in s.get_trials(deepcopy=False)):
        page.figure("Intermediate values (the metric after each epoch)", "intermediate",
                    lambda: vis.plot_intermediate_values(s), lambda: mpl.plot_intermediate_values(s))
    else:  # e.g. refined_* metrics, measured once after the last epoch
        page.add(f"<h3>Intermediate values</h3><p>none: {html.escape(m)} is measured once per trial, "
                 "after the last epoch, so there is no per-epoch curve (and no pruning).</p>")
    page.figure("Parallel coordinates", "parallel", lambda: vis.plot_parallel_coordinate(s, target_name=m),
                lambda: mpl.plot_parallel_coordinate(s, target_name=m), size=(12, 5))
    n_params = len(s.best_params)
    page.figure("Slices", "slice", lambda: vis.plot_slice(s, target_name=m), lambda: mpl.plot_slice(s, target_name=m),
                size=(min(4 * max(n_params, 1), 40), 4))


def importance_sections(page: Page, study: optuna.Study, metrics: list[str]) -> list[str]:
    """Importance tables and bar plots per trial group; returns the two most important parameters."""
    page.add("<h2>Parameter importance</h2>")
    groups = importance.groups(study)
    if len(groups) > 1:
        page.note("The study chooses the architecture, so importance is computed per architecture; over all "
                  f"trials the conditional parameters ({', '.join(importance.conditional_params(study)) or 'none'}) "
                  "would be silently dropped.")
    top: list[str] = []
    for gi, group in enumerate(groups):
        page.add(f"<h3>{html.escape(group.label)} ({len(group.trials)} complete trials)</h3>")
        if group.left_out:
            page.note("left out (not set in every trial of this group): " + ", ".join(group.left_out))
        if group.constant:
            page.note("left out (one value only): " + ", ".join(group.constant))
        if not group.enough:
            page.note("not enough complete trials with varying parameters for importance yet")
            continue
        if len({tuple(t.values) for t in group.trials}) == 1:  # fANOVA fails on it, and no parameter explains it
            page.note(f"every complete trial has the same {', '.join(metrics)} ({group.trials[0].values}): nothing "
                      "for importance to explain yet")
            continue
        sub = group.study(study.directions)
        for ti, imp in enumerate(importance.importances(study, group, metrics)):
            names = list(imp.values)
            if names:
                page.table(["parameter", *names], [
                    [p, *(f"{imp.values[e].get(p, float('nan')):.3f}" for e in names)] for p in imp.ranked_params()
                ])
                top = top or imp.ranked_params()[:2]
            for ename, why in imp.failed.items():
                page.note(f"{ename} failed: {why}")
            for ename, make in importance.evaluators():
                if ename not in imp.values:
                    continue
                kwargs = dict(params=group.params, target=imp.target, target_name=imp.target_name)
                page.figure(
                    f"{ename} importance for {imp.target_name} ({group.label})",
                    f"importance_{gi}_{ti}_{ename.lower().replace('-', '')}",
                    lambda: optuna.visualization.plot_param_importances(sub, evaluator=make(), **kwargs),
                    lambda: optuna.visualization.matplotlib.plot_param_importances(sub, evaluator=make(), **kwargs),
                )
    return top


def contour(page: Page, study: optuna.Study, metrics: list[str], top: list[str]) -> None:
    if len(study.directions) > 1 or len(top) < 2:
        return
    m = metrics[0]
    page.figure(
        f"Contour of the two most important parameters ({top[0]}, {top[1]})", "contour",
        lambda: optuna.visualization.plot_contour(study, params=top, target_name=m),
        lambda: optuna.visualization.matplotlib.plot_contour(study, params=top, target_name=m),
    )


def write(study: optuna.Study, out: Path, storage_url: str, artifacts_dir: str, trust: dict[str, Any] | None = None) -> Path:
    """The whole report: files of the best trial, trials.csv, plots, importances; returns index.html."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = study.user_attrs.get("metrics", ["objective"])
    page = Page(out)
    atomic_write_text(out / "trials.csv", study.trials_dataframe().to_csv(index=False))
    best = best_artifacts(study, out, storage_url, artifacts_dir, trust)
    page.files += ["trials.csv", *best.files]
    states = {st.name.lower(): 0 for st in optuna.trial.TrialState}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name.lower()] += 1
    page.add("<h2>Plots</h2>")
    history_plots(page, study, metrics)
    top = importance_sections(page, study, metrics) if states["complete"] else []
    contour(page, study, metrics, top)

    head = [
        f"<h1>Study {html.escape(study.study_name)}</h1>",
        f"<p>storage {html.escape(mask_url(storage_url))}; objective "
        + html.escape(", ".join(f"{m} ({d.name.lower()})" for m, d in zip(metrics, study.directions)))
        + "; trials: " + ", ".join(f"{v} {k}" for k, v in states.items() if v) + "</p>",
        f"<p>launched with <code>{html.escape(str(study.user_attrs.get('launch_command', '?')))}</code></p>",
    ]
    head += [f"<p class=note>{html.escape(n)}</p>" for n in best.notes]
    if best.trial is not None:
        vals = ", ".join(f"{m} = {v:.5g}" for m, v in zip(metrics, best.trial.values))
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
            for k, v in best.trial.params.items()
        )
        head.append(f"<h2>Best trial {best.trial.number}: {html.escape(vals)}</h2><table>{rows}</table>")
        if "samples.png" in best.files:
            head.append('<h3>Samples of the best model</h3><img src="samples.png" alt="samples of the best model">')
    links = " · ".join(f'<a href="{f}">{f}</a>' for f in ("trials.csv", "best_config.yaml", "best_model.pt") if f in page.files)
    head.append(f"<p>files: {links}</p>")
    study_file = study.user_attrs.get("study_file")
    tail = [f"<h2>Study file</h2><pre>{html.escape(study_file)}</pre>"] if study_file else []
    return page.write(f"cvae-opt report: {study.study_name}", head, tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.report",
        description="Write an offline HTML report of a study: importances, plots, trials.csv, best model.",
        epilog="example: python -m cvae_opt.report --study cvae_re && xdg-open reports/cvae_re/index.html",
    )
    add_study_args(ap)
    ap.add_argument("--artifacts", help=f"artifact folder (default: the one the study recorded, else {DEFAULT_ARTIFACTS})")
    ap.add_argument("--out", help="output folder (default reports/<study>)")
    add_checkpoint_trust_args(ap)
    args = ap.parse_args(argv)
    if not args.out:  # reports/NAME: one folder name, checked before the storage is opened or anything written
        check_study_name(args.study, "--study", "give --out FOLDER for this study's report")
    out = Path(args.out) if args.out else Path("reports") / args.study
    study = study_from_args(args)
    artifacts = args.artifacts or study.user_attrs.get("artifacts", DEFAULT_ARTIFACTS)
    index = write(study, out, args.storage, artifacts, checkpoint_trust(args))
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
