# Figures (pipeline/stages/figures.py): each reads the figures config plus the models or metrics of its runs, and
# writes reports/<scale>/figures/<fig>.png with the data behind it (<fig>.json). The tables rule requires them, so the
# default target rebuilds a figure exactly when its inputs change (the data manifests of the splits it reads included).
from pipeline.workflow_support import figures_config

_FIGCFG = figures_config(P)


def _model_inputs(run_ids, split="test"):
    return [f"{R}/train/{RUNS[rid].train_id}/model.pt" for rid in run_ids] + \
           [CONFIGS.eval[rid] for rid in run_ids] + \
           sorted({MANIFESTS[f"{RUNS[rid].dataset}-{split}"] for rid in run_ids})


_FIG_DEPS = {
    "fig2": lambda c: _model_inputs([c["run"]]),
    "fig4": lambda c: _model_inputs([c["run"]], "train") + [CONFIGS.train[RUNS[c["run"]].train_id]],
    "fig5": lambda c: _model_inputs(c["runs"]),
    "fig7": lambda c: [f"{R}/eval/{item['run']}/metrics.json" for item in c],
}
FIG_INPUTS = {fig: _FIG_DEPS[fig](_FIGCFG[fig]) for fig in FIGS}


rule figure:
    input:
        cfg = CONFIGS.figures,
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
