# Rules. Staleness: each train/evaluate job reads a per-run config JSON whose name carries a digest of its content
# (written by the `config` rule), so a job reruns exactly when a parameter reaching it changes (and when its inputs are
# newer). Data: the per-run configs carry the sha256 of the files each job reads (DATA, Snakefile), so changed bytes
# rerun exactly the jobs that read them (a touched file: nothing), and train/evaluate check the files against them
# before they start; each split's manifest (named by its content) is written by prepare, which parses every file first.
# Logs: results/<scale>/logs/..., appended to (a resumed training keeps the killed attempt's log above its own).
# Resources: gpu=1 on train is what `--resources gpu=N` counts locally; runtime/mem_mb/cpus_per_task (and train's
# gres) come from params.yaml `cluster` and are what the SLURM profile (workflow/profiles/slurm) asks sbatch for.
# A local run ignores them, and no resource is a rerun trigger.


from pipeline.data.manifest import split_files
from pipeline.workflow_support import time_limited_trains


def cluster_resources(rule):
    r = P.cluster.rules[rule]
    return {"runtime": r.runtime_min, "mem_mb": r.mem_mb, "cpus_per_task": r.cpus}


def _split_files(wildcards):
    # ancient: the files' content, not their times, decides (it is in the manifest's name and the per-run configs)
    return [ancient(str(P.data_root / f)) for f in split_files(wildcards.dataset, wildcards.split)]


rule prepare:
    input:
        _split_files
    output:
        f"{R}/data/{{dataset}}-{{split}}-{{digest}}.json"
    wildcard_constraints:
        split = "train|test",
        digest = "[0-9a-f]{16}"
    params:
        root = str(P.data_root)
    resources:
        **cluster_resources("prepare")
    shell:
        "{PY} -m pipeline.stages.prepare --dataset {wildcards.dataset} --split {wildcards.split} "
        "--data-root {params.root} --out {output}"


def _train_manifest(wildcards):
    run = next(r for r in RUNS.values() if r.train_id == wildcards.train_id)
    return MANIFESTS[f"{MODEL_DATASETS[run.model]}-train"]


# A time-limited training (schedule_overrides time_limit_min) is defined by the compute it gets per minute ("25 minutes
# on 2 cores"): it claims the train rule's CPU allotment (cluster.train.cpus), which a local run scales down to
# --cores, so it runs with nothing beside it and Snakemake's OMP_NUM_THREADS gives torch every core; every other
# training counts steps, not minutes, and takes one core (two run at once under --cores 2 --resources gpu=2).
TIME_LIMITED = time_limited_trains(P)


rule train:
    input:
        cfg = lambda wildcards: CONFIGS.train[wildcards.train_id],
        data = _train_manifest,
    output:
        model = f"{R}/train/{{train_id}}/model.pt",
        info = f"{R}/train/{{train_id}}/train.json",
    threads:
        lambda wildcards: P.cluster.rules["train"].cpus if wildcards.train_id in TIME_LIMITED else 1
    resources:
        gpu = 1,
        gres = P.cluster.gpu_gres,
        **cluster_resources("train")
    shell:
        # stderr is appended to the run's log (not a Snakemake `log:`, which Snakemake deletes before each attempt),
        # under a header per attempt, so a resumed training keeps the killed attempt's log above its own
        "mkdir -p {R}/logs/train && echo \"=== attempt $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ===\" "
        ">> {R}/logs/train/{wildcards.train_id}.log && "
        "{PY} -m pipeline.stages.train --config {input.cfg} "
        "--out {R}/train/{wildcards.train_id} 2>> {R}/logs/train/{wildcards.train_id}.log"


def _eval_inputs(wildcards):
    run = RUNS[wildcards.run_id]
    inputs = {"cfg": CONFIGS.eval[wildcards.run_id],
              "data": MANIFESTS[f"{MODEL_DATASETS[run.model]}-test"]}
    if run.method == EXTERNAL:
        inputs["model"] = run.checkpoint["path"]
    else:
        inputs["model"] = f"{R}/train/{run.train_id}/model.pt"
        inputs["info"] = f"{R}/train/{run.train_id}/train.json"
    return inputs


rule evaluate:
    input:
        unpack(_eval_inputs)
    output:
        metrics = f"{R}/eval/{{run_id}}/metrics.json",
        samples = f"{R}/eval/{{run_id}}/samples.json",
    params:
        info = lambda wildcards, input: f"--train-json {input.info}" if "info" in input.keys() else ""
    resources:
        **cluster_resources("evaluate")
    shell:
        "mkdir -p {R}/logs/eval && echo \"=== attempt $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ===\" "
        ">> {R}/logs/eval/{wildcards.run_id}.log && "
        "{PY} -m pipeline.stages.evaluate --config {input.cfg} --model {input.model} {params.info} "
        "--out {R}/eval/{wildcards.run_id} 2>> {R}/logs/eval/{wildcards.run_id}.log"
