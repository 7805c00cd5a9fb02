"""memrl.ray on a real local Ray cluster (this machine's CPUs): a sharded bank of shard actors
gives what one bank gives, survives a shard actor killed mid-run (Ray restarts it, it reopens
from its snapshot and log, nothing acknowledged is lost), and Ray Data bulk embedding writes the
file ``memrl embed`` writes, also when a worker dies on its first batch."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import memrl
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="memrl[ray] is not installed")

import memrl.ray  # noqa: E402
from conftest import REPO  # noqa: E402
from test_client import server_binary  # noqa: E402
from test_sharded import DIM, run_both, same_state  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_shards_give_what_one_bank_gives(cluster: None, tmp_path: Path) -> None:
    for shards in (2, 3):
        one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=0.95)
        sharded = memrl.ray.sharded_bank(
            tmp_path / f"s{shards}", shards, dim=DIM, model_id="toy", dedup_sim=0.95
        )
        run_both(one, sharded, seed=5, count=40)
        sharded.close()


def test_a_killed_shard_actor_comes_back_with_everything_acknowledged(
    cluster: None, tmp_path: Path
) -> None:
    one = memrl.Bank.in_memory(dim=DIM, model_id="toy", dedup_sim=0.95)
    sharded = memrl.ray.sharded_bank(tmp_path, 2, dim=DIM, model_id="toy", dedup_sim=0.95)
    run_both(one, sharded, seed=7, count=30)
    transport = sharded._t
    assert isinstance(transport, memrl.ray.RayShards)
    # SIGKILL-like: the process goes, Ray restarts the actor, which replays its log.
    ray.kill(transport.actors[1], no_restart=False)
    # A read waits for the restart; every acknowledged write is there.
    same_state(one, sharded)
    run_both(one, sharded, seed=8, count=20)
    sharded.close()
    # Reopened from disk by new actors: the same bank.
    again = memrl.ray.sharded_bank(tmp_path, 2)
    same_state(one, again)
    with pytest.raises(memrl.InvalidInputError, match="holds 2 shards"):
        memrl.ray.sharded_bank(tmp_path, 3)
    again.close()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file (a plain reader: 8-byte header length, JSON header)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        dtype = {"F32": np.float32, "U64": np.uint64}[info["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + lo : 8 + n + hi], dtype=dtype).reshape(info["shape"])
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 corpus sentences and what `memrl embed` makes of them."""
    folder = tmp_path_factory.mktemp("corpus")
    src = folder / "corpus.jsonl"
    with open(REPO / "data" / "corpus.jsonl", encoding="utf-8") as f:
        src.write_text("".join(next(f) for _ in range(300)), encoding="utf-8")
    out = folder / "cli.safetensors"
    subprocess.run(
        [
            server_binary(),
            "embed",
            "--input",
            str(src),
            "--field",
            "text",
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
    )
    return src, out


@pytest.mark.parametrize("fail", [False, True])
def test_ray_data_embedding_writes_what_memrl_embed_writes(
    cluster: None, corpus: tuple[Path, Path], tmp_path: Path, fail: bool
) -> None:
    src, cli = corpus
    ds = ray.data.read_json(str(src)).repartition(3)
    out = tmp_path / "ray.safetensors"
    marker = str(tmp_path / "failed-once") if fail else None
    # Two workers of half a CPU each leave one of the cluster's two CPUs to the read tasks.
    rows = memrl.ray.embed_dataset(
        ds, "text", out, workers=2, batch_size=64, num_cpus=0.5, _fail_once=marker
    )
    if fail:
        assert os.path.exists(str(marker)), "the fault was not injected"
    want, got = read_safetensors(cli), read_safetensors(out)
    assert rows == 300
    np.testing.assert_array_equal(got["lines"], want["lines"])
    # The same rows in the same order; each text's vector does not depend on its batch
    # (the embedder packs texts without padding): bit for bit.
    np.testing.assert_array_equal(got["embeddings"], want["embeddings"])


def test_embed_dataset_names_a_missing_column(cluster: None, tmp_path: Path) -> None:
    ds = ray.data.from_items([{"body": "x"}])
    with pytest.raises(memrl.InvalidInputError, match="'text'"):
        memrl.ray.embed_dataset(ds, "text", tmp_path / "x.safetensors")
