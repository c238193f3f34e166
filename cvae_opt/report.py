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
import html
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.artifacts import download_artifact  # noqa: E402

from .checkpoints import load_checkpoint  # noqa: E402
from .cli import run_main  # noqa: E402
from .errors import UserError  # noqa: E402
from .export import best_trial, config_yaml  # noqa: E402
from .files import atomic_write, atomic_write_text  # noqa: E402
from .plots import samples_figure, save_figure  # noqa: E402
from .problems import resolve_problem  # noqa: E402
from .storage import DEFAULT_ARTIFACTS, add_study_args, artifact_store, mask_url, study_from_args  # noqa: E402
from .train import load_data  # noqa: E402

COMPLETE = optuna.trial.TrialState.COMPLETE


def _sub_study(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(trials)
    return sub


def importance_groups(study: optuna.Study) -> list[dict[str, Any]]:
    """Trial groups over which importance is meaningful: per architecture when the study chooses one.
    Each group: label, trials, params (in every trial of the group), left_out (in some only)."""
    done = study.get_trials(deepcopy=False, states=(COMPLETE,))
    groups: list[tuple[str, list]] = []
    archs = sorted({t.params["arch"] for t in done if "arch" in t.params})
    if len(archs) > 1:
        groups = [(f"arch = {a}", [t for t in done if t.params.get("arch") == a]) for a in archs]
    else:
        groups = [("all complete trials", done)]
    out = []
    for label, trials in groups:
        names = set().union(*(t.params for t in trials)) if trials else set()
        common = [n for n in (trials[0].params if trials else {}) if all(n in t.params for t in trials)]
        varying = [n for n in common if len({repr(t.params[n]) for t in trials}) > 1]
        out.append({
            "label": label, "trials": trials, "params": varying,
            "left_out": sorted(names - set(common)), "constant": sorted(set(common) - set(varying)),
        })
    return out


def _evaluators() -> list[tuple[str, Callable[[], Any]]]:
    evs = []
    try:
        import sklearn  # noqa: F401

        evs.append(("fANOVA", lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)))
    except ImportError:
        pass
    evs.append(("PED-ANOVA", lambda: optuna.importance.PedAnovaImportanceEvaluator()))
    return evs


class Report:
    def __init__(self, study: optuna.Study, out: Path, storage_url: str, artifacts_dir: str):
        self.study, self.out, self.url, self.artifacts_dir = study, out, storage_url, artifacts_dir
        self.sections: list[str] = []
        self.files: list[str] = []
        self.metrics = study.user_attrs.get("metrics", ["objective"])
        self.multi = len(study.directions) > 1

    # -- writing helpers ------------------------------------------------------------------------
    def plotly(self, fig: Any, name: str) -> str:
        fig.write_html(str(self.out / f"{name}.html"), include_plotlyjs="directory", full_html=True)
        self.files.append(f"{name}.html")
        return f"{name}.html"

    def png(self, draw: Callable[[], Any], name: str, size: tuple[float, float] = (8, 5)) -> str | None:
        plt.close("all")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                draw()
            except Exception as exc:  # a plot that cannot be drawn for this study is reported, not fatal
                plt.close("all")
                self.sections.append(f"<p class=note>{html.escape(name)}.png not drawn: {html.escape(str(exc))}</p>")
                return None
        fig = plt.gcf()
        fig.set_size_inches(*size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # some optuna axes refuse tight_layout; the plot is still fine
            fig.tight_layout()
        atomic_write(self.out / f"{name}.png", lambda fh: fig.savefig(fh, format="png", dpi=90))
        plt.close("all")
        self.files.append(f"{name}.png")
        return f"{name}.png"

    def figure(self, title: str, name: str, plotly_fn: Callable[[], Any], mpl_fn: Callable[[], Any], size=(8, 5)) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                page = self.plotly(plotly_fn(), name)
        except Exception as exc:
            self.sections.append(f"<h3>{html.escape(title)}</h3><p class=note>not drawn: {html.escape(str(exc))}</p>")
            return
        png = self.png(mpl_fn, name, size)
        img = f'<a href="{page}"><img src="{png}" alt="{html.escape(title)}"></a>' if png else ""
        self.sections.append(f'<h3>{html.escape(title)}</h3><p><a href="{page}">interactive version</a></p>{img}')

    # -- content ----------------------------------------------------------------------------------
    def plots(self) -> None:
        vis, mpl = optuna.visualization, optuna.visualization.matplotlib
        s = self.study
        if self.multi:
            names = self.metrics
            self.figure("Pareto front", "pareto_front", lambda: vis.plot_pareto_front(s, target_names=names),
                        lambda: mpl.plot_pareto_front(s, target_names=names))
            return
        m = self.metrics[0]
        self.figure("Optimization history", "history", lambda: vis.plot_optimization_history(s, target_name=m),
                    lambda: mpl.plot_optimization_history(s, target_name=m))
        if any(t.intermediate_values for t in s.get_trials(deepcopy=False)):
            self.figure("Intermediate values (the metric after each epoch)", "intermediate",
                        lambda: vis.plot_intermediate_values(s), lambda: mpl.plot_intermediate_values(s))
        else:  # e.g. refined_* metrics, measured once after the last epoch
            self.sections.append(f"<h3>Intermediate values</h3><p>none: {html.escape(m)} is measured once per trial, "
                                 "after the last epoch, so there is no per-epoch curve (and no pruning).</p>")
        self.figure("Parallel coordinates", "parallel", lambda: vis.plot_parallel_coordinate(s, target_name=m),
                    lambda: mpl.plot_parallel_coordinate(s, target_name=m), size=(12, 5))
        params = list(s.best_params)
        self.figure("Slices", "slice", lambda: vis.plot_slice(s, target_name=m), lambda: mpl.plot_slice(s, target_name=m),
                    size=(min(4 * max(len(params), 1), 40), 4))

    def importances(self) -> list[str]:
        """Importance tables and bar plots; returns the two most important parameters overall."""
        self.sections.append("<h2>Parameter importance</h2>")
        top: list[str] = []
        targets = [(None, self.metrics[0])] if not self.multi else [
            (lambda t, i=i: t.values[i], name) for i, name in enumerate(self.metrics)
        ]
        groups = importance_groups(self.study)
        if len(groups) > 1:
            done = self.study.get_trials(deepcopy=False, states=(COMPLETE,))
            every = set.intersection(*(set(t.params) for t in done))
            partial = sorted(set().union(*(t.params for t in done)) - every)
            self.sections.append(
                "<p class=note>The study chooses the architecture, so importance is computed per architecture; "
                "over all trials the conditional parameters (" + html.escape(", ".join(partial) or "none")
                + ") would be silently dropped.</p>"
            )
        for gi, g in enumerate(groups):
            self.sections.append(f"<h3>{html.escape(g['label'])} ({len(g['trials'])} complete trials)</h3>")
            if g["left_out"]:
                self.sections.append(
                    "<p class=note>left out (not set in every trial of this group): " + html.escape(", ".join(g["left_out"])) + "</p>"
                )
            if g["constant"]:
                self.sections.append("<p class=note>left out (one value only): " + html.escape(", ".join(g["constant"])) + "</p>")
            if len(g["trials"]) < 3 or not g["params"]:
                self.sections.append("<p class=note>not enough complete trials with varying parameters for importance yet</p>")
                continue
            sub = _sub_study(self.study, g["trials"])
            for ti, (target, tname) in enumerate(targets):
                rows: dict[str, dict[str, float]] = {}
                start = len(self.sections)
                for ename, make in _evaluators():
                    name = f"importance_{gi}_{ti}_{ename.lower().replace('-', '')}"
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            imp = optuna.importance.get_param_importances(sub, evaluator=make(), params=g["params"], target=target)
                    except Exception as exc:
                        self.sections.append(f"<p class=note>{ename} failed: {html.escape(str(exc))}</p>")
                        continue
                    for p, v in imp.items():
                        rows.setdefault(p, {})[ename] = v
                    self.figure(
                        f"{ename} importance for {tname} ({g['label']})", name,
                        lambda: optuna.visualization.plot_param_importances(sub, evaluator=make(), params=g["params"], target=target, target_name=tname),
                        lambda: optuna.visualization.matplotlib.plot_param_importances(sub, evaluator=make(), params=g["params"], target=target, target_name=tname),
                    )
                if rows:
                    evs = [e for e, _ in _evaluators()]
                    head = "".join(f"<th>{e}</th>" for e in evs)
                    body = "".join(
                        f"<tr><td>{html.escape(p)}</td>" + "".join(f"<td>{r.get(e, float('nan')):.3f}</td>" for e in evs) + "</tr>"
                        for p, r in sorted(rows.items(), key=lambda kv: -max(kv[1].values()))
                    )
                    self.sections.insert(start, f"<table><tr><th>parameter</th>{head}</tr>{body}</table>")
                    if not top:
                        top = [p for p, _ in sorted(rows.items(), key=lambda kv: -max(kv[1].values()))][:2]
        return top

    def contour(self, top: list[str]) -> None:
        if self.multi or len(top) < 2:
            return
        s, m = self.study, self.metrics[0]
        self.figure(
            f"Contour of the two most important parameters ({top[0]}, {top[1]})", "contour",
            lambda: optuna.visualization.plot_contour(s, params=top, target_name=m),
            lambda: optuna.visualization.matplotlib.plot_contour(s, params=top, target_name=m),
        )

    def best(self) -> optuna.trial.FrozenTrial | None:
        try:
            trial = best_trial(self.study)
        except UserError as exc:
            self.sections.append(f"<p class=note>{html.escape(str(exc))}</p>")
            return None
        atomic_write_text(self.out / "best_config.yaml", config_yaml(self.study, trial, self.url))
        self.files.append("best_config.yaml")
        aid = trial.user_attrs.get("checkpoint_artifact")
        if not aid:
            self.sections.append(f"<p class=note>trial {trial.number} has no checkpoint artifact (artifacts off or removed); no best_model.pt</p>")
            return trial
        store = artifact_store(self.artifacts_dir)
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "best_model.pt"
            try:
                download_artifact(artifact_store=store, file_path=str(dst), artifact_id=aid)
            except Exception as exc:
                self.sections.append(f"<p class=note>checkpoint of trial {trial.number} not found in {html.escape(self.artifacts_dir)}: {html.escape(str(exc))}</p>")
                return trial
            atomic_write(self.out / "best_model.pt", lambda fh: fh.write(dst.read_bytes()))
        self.files.append("best_model.pt")
        model, cfg, _ = load_checkpoint(self.out / "best_model.pt")
        problem = resolve_problem(cfg.data.problem)
        _, val = load_data(cfg, problem)
        fig = samples_figure(model, problem, val.y[:4], n_samples=30, seed=0, title=f"best trial {trial.number}")
        save_figure(fig, self.out / "samples.png")
        self.files.append("samples.png")
        return trial

    def write(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        s = self.study
        states = {st.name.lower(): 0 for st in optuna.trial.TrialState}
        for t in s.get_trials(deepcopy=False):
            states[t.state.name.lower()] += 1
        df = s.trials_dataframe()
        atomic_write_text(self.out / "trials.csv", df.to_csv(index=False))
        self.files.append("trials.csv")
        best = self.best()
        self.plots()
        top = self.importances() if states["complete"] else []
        self.contour(top)
        head = [
            f"<h1>Study {html.escape(s.study_name)}</h1>",
            f"<p>storage {html.escape(mask_url(self.url))}; objective "
            + html.escape(", ".join(f"{m} ({d.name.lower()})" for m, d in zip(self.metrics, s.directions)))
            + "; trials: " + ", ".join(f"{v} {k}" for k, v in states.items() if v) + "</p>",
            f"<p>launched with <code>{html.escape(str(s.user_attrs.get('launch_command', '?')))}</code></p>",
        ]
        if best is not None:
            vals = ", ".join(f"{m} = {v:.5g}" for m, v in zip(self.metrics, best.values))
            rows = "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
                for k, v in best.params.items()
            )
            head.append(f"<h2>Best trial {best.number}: {html.escape(vals)}</h2><table>{rows}</table>")
            if "samples.png" in self.files:
                head.append('<h3>Samples of the best model</h3><img src="samples.png" alt="samples of the best model">')
        links = " · ".join(f'<a href="{f}">{f}</a>' for f in ("trials.csv", "best_config.yaml", "best_model.pt") if f in self.files)
        head.append(f"<p>files: {links}</p>")
        study_file = s.user_attrs.get("study_file")
        tail = [f"<h2>Study file</h2><pre>{html.escape(study_file)}</pre>"] if study_file else []
        page = (
            "<!doctype html><html><head><meta charset=utf-8>"
            f"<title>cvae-opt report: {html.escape(s.study_name)}</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
            ".note{color:#666}</style></head><body>"
            + "\n".join(head + ["<h2>Plots</h2>"] + self.sections + tail)
            + "</body></html>\n"
        )
        atomic_write_text(self.out / "index.html", page)
        return self.out / "index.html"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cvae_opt.report",
        description="Write an offline HTML report of a study: importances, plots, trials.csv, best model.",
        epilog="example: python -m cvae_opt.report --study cvae_re && xdg-open reports/cvae_re/index.html",
    )
    add_study_args(ap)
    ap.add_argument("--artifacts", help=f"artifact folder (default: the one the study recorded, else {DEFAULT_ARTIFACTS})")
    ap.add_argument("--out", help="output folder (default reports/<study>)")
    args = ap.parse_args(argv)
    study = study_from_args(args)
    artifacts = args.artifacts or study.user_attrs.get("artifacts", DEFAULT_ARTIFACTS)
    out = Path(args.out or Path("reports") / args.study)
    index = Report(study, out, args.storage, artifacts).write()
    print(f"wrote {index}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
