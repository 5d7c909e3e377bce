# Config validation and path helpers shared by every rule file.
import math
from pathlib import Path

# this file is workflow/rules/common.smk of the checkout (also when another Snakefile includes it)
SRC = str(Path(workflow.current_basedir).resolve().parents[1] / "src")
try:
    import synthcxr
except ModuleNotFoundError:
    raise WorkflowError(
        f"the synthcxr package is not installed in the Python that runs snakemake: install this checkout there "
        f"(make install, or pip install -e {Path(SRC).parent}) or run with PYTHONPATH={SRC}"
    ) from None
from synthcxr.config import ConfigError, keys_for, section, validate_config  # noqa: E402
from synthcxr.utils.runtime import prepend_pythonpath  # noqa: E402
from synthcxr.validate.oracle import has_oracle  # noqa: E402

# The rules and their scripts must run the same code: this checkout's package (make install: pip install -e .).
if Path(synthcxr.__file__).resolve().parent != (Path(SRC) / "synthcxr").resolve():
    raise WorkflowError(
        f"synthcxr is imported from {Path(synthcxr.__file__).parent}, not from this checkout ({SRC}/synthcxr): "
        f"install this checkout (make install, or pip install -e {Path(SRC).parent}) or run with PYTHONPATH={SRC}"
    )
# Scripts of a conda deployment (--software-deployment-method conda: envs/synthcxr.yaml holds the
# dependencies, not the package) import it through PYTHONPATH.
prepend_pythonpath(SRC)

try:
    validate_config(config)
    if workflow.is_main_process:  # the source is checked once, before anything is queued
        from synthcxr.data.prepare import check_source

        check_source(config["dataset"], config["labels"])
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None

DATASET = config["dataset"]["name"]
RUN = config["pggan"]["run"]
ARCHIVE = config["archive"]["name"]
PREP = f"results/prepared/{DATASET}"
PGGAN = f"results/pggan/{RUN}"
CLF = "results/classifier"
REID = f"results/reid/{DATASET}"  # the patient verifier (gates.smk), trained once per dataset
ARCH = f"results/archive/{ARCHIVE}"
# The working area (every LCO latent and rendered sample, the operator's) and the release (only released
# samples: what is handed to consumers). docs/archive-format.md is the release's contract.
WORK = f"{ARCH}/work"
REL = f"{ARCH}/release"
VAL = f"results/validate/{ARCHIVE}"
LOGS = "results/logs"
# Logs are namespaced like the outputs they describe, so a second dataset, GAN run or archive keeps
# the first one's logs: prepare-{dataset}.log, train_pggan-{run}.log, train_classifier_{name}.log, and
# archive-{archive}/ for the plan and everything downstream of it.
ALOGS = f"{LOGS}/archive-{ARCHIVE}"
N_SHARDS = math.ceil(config["lco"]["plan"]["n_samples"] / config["lco"]["shard_size"])
SHARDS = [f"{i:05d}" for i in range(N_SHARDS)]
# Only the phantom knows what it drew: the ground-truth oracle rules (oracle.smk) exist for it alone.
ORACLE_ON = has_oracle(config)
# The re-identification audit (gates.smk) runs unless validate.reid.enabled is false.
REID_ON = bool(config["validate"]["reid"]["enabled"])
# Paired counterfactuals (archive.pairs.share > 0): validate_pairs checks them (validate.smk).
PAIRS_ON = config["archive"]["pairs"]["share"] > 0
# Relative to the rule files in workflow/rules/.
CONDA_ENV = "../../envs/synthcxr.yaml"



def stage(name, keys=None):
    """A stage's config section (or only ``keys`` of it) plus the global keys (seed, device, labels); rule params."""
    return section(config, name, keys)
