"""Import hygiene: the training stage's supervising process does not import torch, and the lazily loaded package
names (pipeline.utils.lazy) resolve to what the eager imports gave, whatever was imported first."""
import subprocess
import sys

import pytest

from conftest import ROOT, needs_data
from pipeline.utils.lazy import lazy_attributes


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_training_supervisor_does_not_import_torch():
    """The stage's supervising process only spawns and watches the worker: importing torch there cost every training
    job seconds (56 of them in the smoke grid; docs/performance.md)."""
    p = _python("import sys; import pipeline.stages.train, pipeline.data.manifest, pipeline.utils.memcap; "
                "sys.exit('torch' in sys.modules)")
    assert p.returncode == 0, "importing the training stage's supervisor imported torch" + p.stderr


@pytest.mark.parametrize("first", ["pipeline.utils.provenance", "pipeline.utils.precision", "pipeline.data.datasets",
                                   "pipeline.data.manifest", "pipeline.stages.evaluate"])
def test_package_names_are_the_functions_whatever_was_imported_first(first):
    """The smoke run caught this: a lazily loaded name equal to a submodule's (pipeline.utils.provenance) came back
    as the module once the submodule had been imported."""
    p = _python(f"import {first}\n"
                "import inspect\n"
                "from pipeline.utils import provenance, resolve_device, autocast, mixed_forward, wilson_interval\n"
                "from pipeline.data import load_dataset, read_idx, NORMALIZATION, Dataset\n"
                "assert all(inspect.isfunction(f) or inspect.isclass(f) for f in (provenance, resolve_device, "
                "autocast, mixed_forward, wilson_interval, load_dataset, read_idx, Dataset)), 'a name is a module'\n"
                "import pipeline.data as d\n"
                "assert 'load_split' in dir(d)\n"
                "try:\n    d.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\n"
                "else:\n    raise SystemExit('no AttributeError')\n")
    assert p.returncode == 0, p.stderr


def test_a_lazy_name_that_is_a_submodule_is_refused():
    with pytest.raises(ImportError, match=r"lazy names \['provenance'\] are also submodule names"):
        lazy_attributes("pipeline.utils", {"provenance": "pipeline.utils.provenance"})


@needs_data
def test_the_supervisor_runs_a_stage_without_importing_torch(tmp_path):
    """Not only the imports: main() up to the spawned worker (run_capped stubbed) leaves torch unimported."""
    from dataclasses import replace

    from test_train_resume import CFG
    (tmp_path / "train.json").write_text(replace(CFG, train_id="supervised").to_json())
    p = _python("import sys\n"
                "import pipeline.stages.train as stage\n"
                "from pipeline.utils.memcap import CapResult\n"
                "calls = []\n"
                "stage.run_capped = lambda cmd, cap, **kw: calls.append(cmd) or CapResult(0, False, 0.0)\n"
                f"rc = stage.main(['--config', {str(tmp_path / 'train.json')!r}, '--out', {str(tmp_path / 'out')!r}])\n"
                "assert rc == 0 and calls and '--worker' in calls[0], (rc, calls)\n"
                "sys.exit('torch' in sys.modules)\n")
    assert p.returncode == 0, "the supervisor imported torch while running the stage" + p.stderr
