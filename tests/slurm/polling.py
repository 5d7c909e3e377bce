"""``python polling.py ARGS``: snakemake ARGS, with the SLURM executor checking job status at a fixed pace.

snakemake-executor-plugin-slurm lengthens the pause after each status check that finds no job finished by
10 s (up to 180 s), which suits cluster jobs of hours. The test cluster's jobs take seconds, so that back-off,
not the jobs, set the SLURM test's wall time. Started through this file, the plugin keeps the pause the
command line asks for (``--seconds-between-status-checks``); submission, status queries, job steps and
everything else stay the plugin's own code.
"""

from __future__ import annotations

import sys

import snakemake_executor_plugin_slurm as slurm

_check_active_jobs = slurm.Executor.check_active_jobs


async def _check_at_a_fixed_pace(self, active_jobs):
    async for job in _check_active_jobs(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = self.workflow.remote_execution_settings.seconds_between_status_checks


slurm.Executor.check_active_jobs = _check_at_a_fixed_pace

if __name__ == "__main__":
    from snakemake.cli import main

    sys.exit(main())
