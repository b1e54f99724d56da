# Figures (pipeline/stages/figures.py): each reads figures.json plus the models or metrics of its runs, and writes
# reports/<scale>/figures/<fig>.png with the data behind it (<fig>.json). The tables rule requires them, so the default
# target rebuilds a figure exactly when its inputs change.
from pipeline.workflow_support import figures_config

_FIGCFG = figures_config(P)


def _model_inputs(run_ids):
    return [f"{R}/train/{RUNS[rid].train_id}/model.pt" for rid in run_ids] + \
           [f"{R}/config/eval/{rid}.json" for rid in run_ids]


_FIG_DEPS = {
    "fig2": lambda c: _model_inputs([c["run"]]),
    "fig4": lambda c: _model_inputs([c["run"]]) + [f"{R}/config/train/{RUNS[c['run']].train_id}.json"],
    "fig5": lambda c: _model_inputs(c["runs"]),
    "fig7": lambda c: [f"{R}/eval/{item['run']}/metrics.json" for item in c],
}
FIG_INPUTS = {fig: _FIG_DEPS[fig](_FIGCFG[fig]) for fig in FIGS}


rule figure:
    input:
        cfg = f"{R}/config/figures.json",
        deps = lambda wildcards: FIG_INPUTS[wildcards.fig],
    output:
        png = f"{REPORT}/figures/{{fig}}.png",
        data = f"{REPORT}/figures/{{fig}}.json",
    wildcard_constraints:
        fig = "|".join(FIGS) or "none"
    resources:
        **cluster_resources("figure")
    log:
        f"{R}/logs/figures/{{fig}}.log"
    shell:
        "{PY} -m pipeline.stages.figures --figure {wildcards.fig} --config {input.cfg} --results {R} "
        "--out {REPORT}/figures 2> {log}"
