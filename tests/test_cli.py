"""The `microscope` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from backend.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def test_models_add_queues_registration_and_rejects_bad_specs(settings) -> None:
    ok = runner.invoke(app, ["models", "add", "timm:resnet18"])
    assert ok.exit_code == 0, ok.output
    assert "resnet18-random" in ok.output and "job #" in ok.output
    bad = runner.invoke(app, ["models", "add", "hub:whatever"])
    assert bad.exit_code == 2
    jobs = runner.invoke(app, ["jobs"])
    assert jobs.exit_code == 0 and "register_model" in jobs.output
    assert "weight_views" in jobs.output  # needs no images: queued with the registration


def test_datasets_add_rejects_a_missing_folder(settings, tmp_path: Path) -> None:
    r = runner.invoke(app, ["datasets", "add", str(tmp_path / "nope")])
    assert r.exit_code == 2
    assert "does not exist" in " ".join(r.output.split())


def test_models_inspect_prints_layers_without_registering(settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "backend.cli", "models", "inspect", "default", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["family"] == "efficientnet" and info["pretrained"] is True
    names = [x["name"] for x in info["layers"]]
    assert "blocks.3" in names and "conv_head" in names
    assert {x["name"]: x["unit_count"] for x in info["layers"]}["conv_head"] == 1280
    listed = runner.invoke(app, ["models", "list"])
    assert "efficientnet" not in listed.output  # nothing was registered


def test_inspect_reports_an_unreachable_hub_clearly(settings) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "backend.cli", "models", "inspect", "timm:resnet18@a1_in1k"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 2
    assert "local checkpoint" in out.stderr or "safetensors" in out.stderr


def test_up_waits_on_its_jobs_and_what_they_queued_not_on_later_strangers(
    settings, session, monkeypatch, capsys
) -> None:
    """`up --no-serve` follows the jobs it queued and their shards and render blocks; a job
    someone queued later for another model is neither waited on nor reported."""
    from backend import cli
    from backend.db.models import Job
    from tests.factories import make_dataset, make_job, make_model

    m, other = make_model(session, "mine"), make_model(session, "theirs")
    ds = make_dataset(session)
    imported = make_job(session, "import_dataset", state="succeeded", queue="cpu", dataset=ds)
    mine = make_job(session, "mine_examples", state="succeeded", model=m, dataset=ds)
    bulk = make_job(session, "featvis_bulk", state="succeeded", queue="cpu", model=m)
    shard = make_job(session, "mine_shard", state="running", model=m, dataset=ds)
    block = make_job(session, "featvis", model=m)
    stranger = make_job(session, "register_model", model=other)  # never runs here
    session.commit()

    rounds: list[int] = []

    def sleep(_seconds: float) -> None:  # the worker finishes the spawned jobs meanwhile
        rounds.append(1)
        if len(rounds) > 3:
            raise AssertionError("up is still waiting after its own jobs finished")
        for job in session.scalars(select(Job).where(Job.id.in_([shard.id, block.id]))):
            job.state = "succeeded"
        session.commit()

    monkeypatch.setattr(cli.time, "sleep", sleep)
    assert cli._wait_for_jobs(settings, [imported.id, mine.id, bulk.id], None) is True
    assert len(rounds) == 1  # it did wait for the shard and the render block
    cli._print_jobs(settings, followed=[imported.id, mine.id, bulk.id])
    out = capsys.readouterr().out
    assert f"#{shard.id} mine_shard" in out and f"#{block.id} featvis" in out
    assert f"#{stranger.id}" not in out and "register_model" not in out
