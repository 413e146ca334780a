"""The CLI as a user runs it: real subprocesses, one-line errors, no partial outputs."""

import json

import pytest

from edgeskip.train import load_checkpoint
from tests.conftest import cli, inproc


def run(*args, cwd=None):
    return cli(*args, timeout=300, cwd=cwd)


def one_line_error(res, *fragments):
    assert res.returncode == 2, res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_main_job_on_digits_end_to_end(tmp_path):
    out = tmp_path / "run"
    res = run("pareto", "--out", out, "--epochs", "3", "--lr", "0.08", "--repeats", "3", "--quiet", "--threads", "1")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.pt", "pareto.json", "pareto.png", "sensitivity.json"]
    assert load_checkpoint(out / "model.pt").train_cfg.lr == 0.08  # --lr when training first (compile has it too)
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["configs"][0]["n_skipped"] == 0 and doc["cost"] == "latency_s"
    assert "wrote" in res.stdout and "skip array" in res.stdout
    ev = run("evaluate", "--checkpoint", out / "model.pt", "--skip", "110111")
    assert ev.returncode == 0 and "test accuracy" in ev.stdout and "skipped 1/6" in ev.stdout


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--depth", "21"], ["6n+2"]),
        (["--p-last", "0"], ["(0, 1]"]),
        (["--p-last", "1.2"], ["(0, 1]"]),
        (["--dataset", "cifar10", "--data-dir", "{tmp}/missing"], ["does not exist"]),
        (["--dataset", "imagefolder", "--data-dir", "{tmp}/missing"], ["does not exist"]),
        (["--recipe", "imagenet"], ["--recipe", "he2016"]),
        (["--amp", "fp16"], ["--amp", "bf16"]),
        (["--stop-after", "0"], ["--stop-after"]),
        (["--cutout", "-2"], ["cutout", ">= 0"]),
        (["--gates", "rnn", "--stop-after", "1"], ["--stop-after"]),
        (["--image-size", "32x32"], ["--image-size", "imagefolder", "digits"]),  # it used to be ignored silently
    ],
)
def test_train_bad_input(tmp_path, args, fragments):
    """Through the same click command in this process (a user's process, as the other tests here run it, would cost
    a Python start and a torch import per case)."""
    out = tmp_path / "m.pt"
    argv = ["train", *[a.replace("{tmp}", str(tmp_path)) for a in args], "--epochs", "1", "--out", str(out), "--quiet"]
    one_line_error(inproc(*argv), *fragments)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_corrupt_archive_cli(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    res = run("train", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "m.pt", "--quiet")
    one_line_error(res, "corrupt archive")
    assert not (tmp_path / "m.pt").exists()


def test_bad_checkpoint_and_skip_arrays(tmp_path, tiny_checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    out = tmp_path / "out"
    one_line_error(run("pareto", "--checkpoint", junk, "--out", out), "not a readable edgeskip checkpoint")
    assert not out.exists()
    one_line_error(inproc("pareto", "--checkpoint", tmp_path / "nope.pt", "--out", out), "does not exist")
    one_line_error(inproc("evaluate", "--checkpoint", tiny_checkpoint, "--skip", "1101"), "length 4", "B_s = 6")
    one_line_error(inproc("evaluate", "--checkpoint", tiny_checkpoint, "--skip", "110121"), "0 or 1")


def test_evaluate_an_option_array_with_int8_blocks(tiny_checkpoint, tmp_path):
    full = run("evaluate", "--checkpoint", tiny_checkpoint, "--split", "val")
    mixed = run(
        "evaluate", "--checkpoint", tiny_checkpoint, "--skip", "818011", "--split", "val", "--calibration-images", "128"
    )
    assert full.returncode == 0 and mixed.returncode == 0, mixed.stderr
    assert "skipped 1/6  int8 2 (calibrated on 128 training images)" in mixed.stdout
    acc = [float(r.stdout.split()[2]) for r in (full, mixed)]
    assert abs(acc[0] - acc[1]) <= 0.05
    whole = inproc("evaluate", "--checkpoint", tiny_checkpoint, "--skip", "888888+8", "--calibration-images", "128")
    assert whole.returncode == 0 and "int8 6 + the rest (calibrated on 128" in whole.stdout, whole.stderr
    one_line_error(inproc("evaluate", "--checkpoint", tiny_checkpoint, "--skip", "888888+9"), "only 0, 1 and 8")
    one_line_error(
        inproc("evaluate", "--checkpoint", tiny_checkpoint, "--skip", "818011", "--calibration-images", "0"),
        "--calibration-images",
    )
    out = tmp_path / "b"
    one_line_error(
        inproc("compile", "--checkpoint", tiny_checkpoint, "--int8", "--calibration-images", "-5", "--out", out),
        "--calibration-images",
    )
    assert not out.exists()


def test_resume_cli(tmp_path):
    out = tmp_path / "m.pt"
    first = run("train", "--epochs", "1", "--depth", "14", "--width", "4", "--out", out, "--quiet")
    assert first.returncode == 0, first.stderr
    assert "3 gated blocks" in first.stdout  # what the run gated
    one_line_error(inproc("train", "--epochs", "1", "--out", out, "--quiet"), "--resume")
    before = out.read_bytes()
    again = run("train", "--resume", "--out", out, "--quiet")
    assert again.returncode == 0 and "epoch 1/1" in again.stdout
    assert "already complete, nothing written" in again.stdout and "wrote" not in again.stdout
    assert out.read_bytes() == before


def test_recipe_options_are_train_options():
    from edgeskip.cli import train
    from edgeskip.recipes import RECIPES

    names = {p.name for p in train.params}
    for r in RECIPES.values():
        assert set(r.options) <= names, (r.name, set(r.options) - names)


def test_recipe_sets_defaults_and_given_options_win(tmp_path):
    import torch

    out = tmp_path / "m.pt"
    res = run(
        "train",
        "--recipe",
        "he2016",
        "--epochs",
        "1",
        "--depth",
        "8",
        "--shortcut",
        "proj",
        "--out",
        out,
        "--quiet",
        "--threads",
        "1",
    )
    assert res.returncode == 0, res.stderr
    ck = torch.load(out, weights_only=True)
    t, m = ck["train"], ck["model"]
    assert (t["weight_decay"], t["schedule"], t["nesterov"], t["recipe"]) == (1e-4, "step", False, "he2016")
    assert t["epochs"] == 1 and m["shortcut"] == "proj" and m["sd_mode"] == "none"  # given options win


def test_int8_refused_for_a_skipnet(skipnet_checkpoint, tmp_path):
    out = tmp_path / "b"
    one_line_error(
        inproc("compile", "--checkpoint", skipnet_checkpoint, "--int8", "--target", "host", "--out", out),
        "--int8 applies to edgeskip models",
    )
    assert not out.exists()


@pytest.mark.slow
def test_dfs_cli_trains_evaluates_and_refuses_bad_settings(tmp_path, tiny_checkpoint):
    s1 = tmp_path / "dfs1.pt"
    res = run("train", "--gates", "dfs", "--init", tiny_checkpoint, "--epochs", "1", "--out", s1, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "cp 1.000" in res.stdout  # step 1 (dfs-full, the default for dfs gates): every block at full precision
    ev = run("evaluate", "--checkpoint", s1, "--split", "val")
    assert (
        ev.returncode == 0
        and "cp 1.000" in ev.stdout
        and "options skip 0.00 8-bit 0.00 16-bit 0.00 full 1.00" in ev.stdout
    )
    out = tmp_path / "x.pt"
    one_line_error(inproc("train", "--gates", "dfs", "--dfs-bits", "3", "--epochs", "1", "--out", out), "4, 8, 16")
    one_line_error(inproc("train", "--gates", "dfs", "--dfs-bits", "8,x", "--epochs", "1", "--out", out), "--dfs-bits")
    one_line_error(
        inproc("train", "--gates", "dfs", "--gate-mode", "dfs", "--cp-target", "0", "--epochs", "1", "--out", out),
        "cp target must be in (0, 1]",
    )
    one_line_error(
        inproc("train", "--gates", "rnn", "--gate-mode", "dfs", "--epochs", "1", "--out", out),
        "does not train rnn gates",
    )
    one_line_error(inproc("train", "--gates", "lstm", "--epochs", "1", "--out", out), "--gates")
    one_line_error(
        inproc("compile", "--checkpoint", s1, "--int8", "--target", "host", "--out", tmp_path / "b"),
        "--int8 applies to edgeskip models",
    )
    assert not out.exists() and not (tmp_path / "b").exists()


def test_pareto_with_a_beam_search_and_bad_searches(tiny_checkpoint, tmp_path):
    out = tmp_path / "beam"
    res = inproc(
        "pareto", "--checkpoint", tiny_checkpoint, "--search", "beam", "--beam-width", "2", "--search-budget", "20",
        "--screen-images", "50",
        "--latency", "none", "--out", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    doc = json.loads((out / "pareto.json").read_text())
    assert doc["search"]["method"] == "beam" and doc["search"]["beam_width"] == 2
    assert 0 < doc["search"]["evaluated"] <= 20 and doc["cost"] == "macs" and doc["search"]["screen_images"] == 50
    assert "beam" in json.loads((out / "sensitivity.json").read_text())["curves"]
    for args, fragments in [
        (["--search", "annealing"], ["--search", "beam"]),
        (["--search", "beam", "--beam-width", "0"], ["--beam-width"]),
        (["--search", "beam", "--search-budget", "0"], ["--search-budget"]),
        (["--search", "beam", "--search-budget", "3"], ["budget of 3", "B_s = 6"]),
        (["--search", "exhaustive", "--search-budget", "32"], ["2^6 = 64", "--search beam"]),
        (["--search", "exhaustive", "--screen-images", "100"], ["screening applies to --search beam"]),
        (["--search", "beam", "--screen-images", "-1"], ["--screen-images"]),
    ]:
        bad = tmp_path / "bad"
        one_line_error(inproc("pareto", "--checkpoint", tiny_checkpoint, *args, "--out", bad), *fragments)
        assert not bad.exists()
    out = tmp_path / "b"
    one_line_error(
        inproc(
            "compile", "--checkpoint", tiny_checkpoint, "--search", "exhaustive", "--search-budget", "8", "--out", out
        ),
        "2^6 = 64",
    )
    assert not out.exists()
