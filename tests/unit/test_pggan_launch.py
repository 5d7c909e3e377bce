"""The torchrun command lines train_pggan starts, parsed with torchrun's own argument parser."""

import pytest
from torch.distributed.run import get_args_parser

import synthcxr.pggan.launch as D


def _torchrun_args(cmd: list[str]):
    i = cmd.index("torch.distributed.run")
    return get_args_parser().parse_args(cmd[i + 1:])


def test_single_node_command_passes_the_log_file_to_the_training_module(tmp_path):
    cmd = D.torchrun_command(tmp_path / "c.json", tmp_path / "data", tmp_path / "out", tmp_path / "t.log", nproc=4)
    a = _torchrun_args(cmd)
    assert a.standalone and a.nproc_per_node == "4" and a.module and a.training_script == "synthcxr.pggan.worker"
    assert a.training_script_args[-2:] == ["--log-file", str(tmp_path / "t.log")]


def test_multi_node_command_runs_one_agent_per_node_meeting_on_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "slurm_nodes", lambda job: [("gpu07", "10.1.0.7"), ("gpu08", "10.1.0.8"), ("gpu09", "10.1.0.9")])
    env = {"SLURM_JOB_ID": "4242", "SLURMD_NODENAME": "gpu09"}  # launched off the head node: port from the job id
    cmd = D.torchrun_command(tmp_path / "c.json", tmp_path / "d", tmp_path / "o", None, nproc=8, nodes=3, env=env, threads=6)
    srun = cmd[: cmd.index("torch.distributed.run") - 2]
    assert srun[0] == "srun" and {"--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--cpus-per-task=6"} <= set(srun)
    a = _torchrun_args(cmd)
    assert (a.nnodes, a.nproc_per_node, a.rdzv_backend) == ("3", "8", "c10d") and not a.standalone
    assert a.rdzv_endpoint == f"10.1.0.7:{29400 + 4242 % 20000}" and a.rdzv_id == "synthcxr-4242"
    assert a.training_script == "synthcxr.pggan.worker" and "--log-file" not in a.training_script_args


def test_multi_node_needs_an_allocation_of_that_many_nodes(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="pggan.nodes is 2.*SLURM allocation.*pggan.nodes: 1"):
        D.torchrun_command(tmp_path / "c.json", tmp_path, tmp_path, None, nproc=1, nodes=2, env={})
    monkeypatch.setattr(D, "slurm_nodes", lambda job: [("n1", "127.0.0.1")])
    with pytest.raises(RuntimeError, match="pggan.nodes is 2 but SLURM job 7 holds 1 node"):
        D.torchrun_command(tmp_path / "c.json", tmp_path, tmp_path, None, nproc=1, nodes=2, env={"SLURM_JOB_ID": "7"})


def test_scontrol_fields_are_parsed_from_one_line_records():
    rec = "JobId=12 JobName=x UserId=root(0) NodeList=n[1-2] BatchHost=n1 NumNodes=2"
    assert D._field(rec, "NodeList") == "n[1-2]" and D._field(rec, "NumNodes") == "2"
    with pytest.raises(RuntimeError, match="no NodeAddr="):
        D._field(rec, "NodeAddr")
