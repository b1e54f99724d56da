# Rules. Staleness: each train/evaluate job reads a per-run config JSON that the Snakefile rewrites only when its
# content changes, so a job reruns exactly when a parameter reaching it changes (and when its inputs are newer).
# Resources: gpu=1 on train is what `--resources gpu=N` counts locally; runtime/mem_mb/cpus_per_task (and train's
# gres) come from params.yaml `cluster` and are what the SLURM profile (workflow/profiles/slurm) asks sbatch for.
# A local run ignores them, and no resource is a rerun trigger.


def cluster_resources(rule):
    r = P.cluster.rules[rule]
    return {"runtime": r.runtime_min, "mem_mb": r.mem_mb, "cpus_per_task": r.cpus}


rule prepare:
    output:
        f"{R}/data/{{dataset}}.json"
    params:
        root = str(P.data_root)
    resources:
        **cluster_resources("prepare")
    shell:
        "{PY} -m pipeline.stages.prepare --dataset {wildcards.dataset} --data-root {params.root} --out {output}"


def _dataset_manifest(wildcards):
    run = next(r for r in RUNS.values() if r.train_id == wildcards.train_id)
    return f"{R}/data/{MODEL_DATASETS[run.model]}.json"


rule train:
    input:
        cfg = f"{R}/config/train/{{train_id}}.json",
        data = _dataset_manifest,
    output:
        model = f"{R}/train/{{train_id}}/model.pt",
        info = f"{R}/train/{{train_id}}/train.json",
    resources:
        gpu = 1,
        gres = P.cluster.gpu_gres,
        **cluster_resources("train")
    log:
        f"{R}/logs/train/{{train_id}}.log"
    shell:
        "{PY} -m pipeline.stages.train --config {input.cfg} --out {R}/train/{wildcards.train_id} 2> {log}"


def _eval_inputs(wildcards):
    run = RUNS[wildcards.run_id]
    inputs = {"cfg": f"{R}/config/eval/{wildcards.run_id}.json",
              "data": f"{R}/data/{MODEL_DATASETS[run.model]}.json"}
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
    log:
        f"{R}/logs/eval/{{run_id}}.log"
    shell:
        "{PY} -m pipeline.stages.evaluate --config {input.cfg} --model {input.model} {params.info} "
        "--out {R}/eval/{wildcards.run_id} 2> {log}"
