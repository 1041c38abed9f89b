"""DistributedDataParallel: the training script under torchrun, 2 CPU processes on gloo.

Each rank draws different batches, so the replicas stay identical only if DDP averages
the gradients across ranks; the test checks both halves of that statement.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from resnorm import train

    out_dir = sys.argv[1]
    argv = sys.argv[2:]
    cfg = train.parse_args(argv)
    initial = train.initial_model_digest(cfg)
    result = train.main(argv)
    rank = int(os.environ["RANK"])
    record = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "backend": torch.distributed.get_backend(),
        "initial": initial,
        "final": train.state_digest(result.model),
        "first_batch": train.first_batch_digest(cfg, rank, int(os.environ["WORLD_SIZE"])),
        "logged": len(result.log),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    torch.distributed.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_ranks_keep_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ckpt = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RESNORM_MODE": "quick", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(tmp_path),
           "preset=quick", "steps=3", "n_test=70", "log_interval=1", "eval_interval=1000", "eval_examples=8",
           f"out={ckpt}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in records] == [2, 2]
    assert {r["backend"] for r in records} == {"gloo"}
    # the ranks trained on different data ...
    assert records[0]["first_batch"] != records[1]["first_batch"]
    # ... the weights moved ...
    assert records[0]["final"] != records[0]["initial"]
    # ... and the two replicas are bit-identical after 3 optimizer steps
    assert records[0]["final"] == records[1]["final"]
    # only rank 0 logs and saves
    assert records[0]["logged"] == 3 and records[1]["logged"] == 0
    assert ckpt.is_file()
