"""`snakemake --lint` is clean and `snakemake -n` plans every stage of the default DAG."""

from __future__ import annotations

import re
import subprocess

from dag import REPO, SNAKEMAKE, run_group

STAGES = {
    "prepare", "train_pggan", "train_classifier", "plan", "lco_margins", "lco", "sample", "validate_memorization",
    "finalize_archive", "validate_fid", "validate_tstr", "validate_diversity", "validate_lco",
    "train_reid_verifier", "validate_reid", "reader_study", "release", "all",
    "prepare_oracle", "train_oracle", "validate_oracle",  # the phantom demo has a ground-truth oracle
}


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    return run_group([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(cwd), *args], timeout=600, cwd=REPO)


def test_lint_is_clean(tmp_path):
    proc = _run("--lint", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_dry_run_plans_the_full_dag(tmp_path):
    proc = _run("-n", "--cores", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    planned = set(re.findall(r"^\s*(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M))
    assert planned == STAGES
    # one LCO and one sample job per shard: ceil(n_samples / shard_size) of the demo config
    assert re.search(r"^lco\s+4$", proc.stdout, flags=re.M) and re.search(r"^sample\s+4$", proc.stdout, flags=re.M)


def test_invalid_config_fails_before_any_rule(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pggan:\n  lrr: 0.1\n")
    proc = _run("-n", "--cores", "1", "--configfile", str(bad), cwd=tmp_path)
    assert proc.returncode != 0
    assert "unknown key 'pggan.lrr'" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_dataset_root_fails_when_the_dag_is_built(tmp_path):
    cfg = tmp_path / "nih.yaml"
    cfg.write_text(f"dataset: {{name: nih, format: nih, root: {tmp_path / 'no-such-folder'}}}\n")
    proc = _run("-n", "--cores", "1", "--configfile", str(cfg), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "'dataset.root'" in out and "no-such-folder" in out, out[-3000:]
    assert not (tmp_path / "results").exists()


def test_slurm_profile_resolves_as_users_type_it(tmp_path):
    """`snakemake --profile slurm` from the repo root finds the profile (a dry run needs no cluster)."""
    proc = _run("--profile", "slurm", "-n", "--quiet", "rules", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "no profile.yaml" not in out and re.search(r"^train_pggan\s+1$", out, flags=re.M), out[-3000:]


def _dry_run(tmp_path, target: str, extra: str) -> str:
    """The plan ``snakemake -n`` prints for ``target`` with ``extra`` YAML merged over the default config."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(extra)
    # the target first: --configfile takes every word after it
    proc = _run("-n", "--cores", "1", target, "--configfile", str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_plan_waits_for_the_checker_only_when_it_leaves_out_what_the_checker_cannot_see(tmp_path):
    """``lco.plan.min_checker_sensitivity`` > 0 makes the plan read the checker's metrics.json; 0 keeps the
    plan independent of the classifiers (an edit of the checker then never replans)."""
    plan = "results/archive/demo/plan.parquet"
    on = _dry_run(tmp_path, plan, "lco:\n  plan: {mode: match_real, n_samples: 1024, min_checker_sensitivity: 0.8}\n")
    off = _dry_run(tmp_path, plan, "lco:\n  plan: {mode: match_real, n_samples: 1024}\n")
    assert re.search(r"^\s*rule train_classifier:\s*\n(.*\n)*?\s*output: results/classifier/check/", on, flags=re.M)
    assert "results/classifier/check" not in off


def test_lco_reads_the_realism_gate_only_when_it_is_on(tmp_path):
    """``lco.realism_quantile`` makes lco_margins write realism.npz and every lco job read it; null leaves both out."""
    shard = "results/archive/demo/work/latents/shard-00000.parquet"
    on = _dry_run(tmp_path, shard, "lco: {realism_quantile: 0.95}\n")
    off = _dry_run(tmp_path, shard, "lco: {realism_quantile: null}\n")
    gate = "results/archive/demo/work/realism.npz"
    assert re.search(r"rule lco_margins:\s*\n(.*\n)*?\s*output: [^\n]*" + re.escape(gate), on)
    assert re.search(r"rule lco:\s*\n\s*input: [^\n]*" + re.escape(gate), on)
    assert gate not in off


def test_a_package_from_another_checkout_is_refused(tmp_path):
    """The rules and their scripts run one copy of the code: a synthcxr imported from elsewhere is an error
    that says how to install this checkout, not a run that mixes two versions."""
    import os
    import shutil

    other = tmp_path / "other" / "src"
    shutil.copytree(REPO / "src" / "synthcxr", other / "synthcxr", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(other)}
    proc = run_group([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--cores", "1"],
                     timeout=600, cwd=REPO, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"synthcxr is imported from {other / 'synthcxr'}" in out and "make install" in out, out[-3000:]
    assert not (tmp_path / "results").exists()


def test_a_missing_package_is_an_error_that_says_how_to_install_it(tmp_path):
    """Snakemake run from a Python without the package: one clear error, not a traceback from an import."""
    import os

    fake = tmp_path / "p" / "synthcxr"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'synthcxr\'")\n')
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "p")}
    proc = run_group([SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"), "-n", "--cores", "1"],
                     timeout=600, cwd=REPO, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the synthcxr package is not installed in the Python that runs snakemake" in out and "make install" in out, out[-3000:]


def test_the_workflow_builds_its_dag_without_loading_torch(tmp_path):
    """Every SLURM job and every `snakemake -n` parses the Snakefile: what the rules import while the DAG is built
    stays free of torch (seconds per parse). With torch made unimportable the dry run of the whole demo DAG,
    pairs and the realism gate on, still plans every stage."""
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text("archive:\n  pairs: {share: 0.2, findings: [Effusion], embed_weight: 1.0}\nlco: {realism_quantile: 0.95}\n")
    code = ("import sys; sys.modules['torch'] = None; from snakemake.cli import main; "
            f"sys.argv = ['snakemake', '-s', {str(REPO / 'Snakefile')!r}, '-d', {str(tmp_path)!r}, '-n', '--cores', '1', "
            f"'--configfile', {str(cfg)!r}]; main()")
    proc = run_group([sys.executable, "-c", code], timeout=600, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert STAGES | {"train_pair_verifier", "validate_pairs"} <= set(re.findall(r"^\s*(?:local)?rule (\w+):", out, flags=re.M))
