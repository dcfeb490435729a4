"""The demo runs offline and compresses for real."""

from __future__ import annotations

import json

from lcpress.cli import main


def test_demo_compresses_to_its_flops_target_and_keeps_accuracy(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--quiet", "--steps", "3", "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "TOTAL" in out and "accuracy: dense" in out and "rank" in out
    info = json.loads((run / "run.json").read_text())
    totals = info["totals"]
    assert totals["flops_after"] <= 0.3 * totals["flops_before"]
    assert info["metric"] >= info["dense_metric"] - 0.05
    assert info["max_abs_error"] < 1e-4
    assert (run / "model.safetensors").is_file()


def test_demo_without_an_output_dir_leaves_no_files_and_says_how_to_keep_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quiet", "--steps", "1"]) == 0
    assert "next: `lcpress demo --output-dir runs/demo` keeps the run" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_config_errors_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {builtin: digits_cnn}\ndata: {builtin: digits}\ntasks:\n  - layers: ['*']\n    optoins: {}\n")
    assert main(["compress", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tasks[0].optoins: unknown key (did you mean 'options'?)" in err
    assert "Traceback" not in err


def test_an_interrupted_demo_run_resumes_as_its_message_says(tmp_path, monkeypatch, capsys):
    import lcpress

    run = tmp_path / "demo"
    original = lcpress.LCEngine.l_step  # the LC run's L steps, not the training of the demo's dense model

    def cut(self, k, mu):
        if k == 2:
            raise KeyboardInterrupt
        return original(self, k, mu)

    with monkeypatch.context() as m:
        m.setattr(lcpress.LCEngine, "l_step", cut)
        assert main(["demo", "--quiet", "--steps", "3", "--output-dir", str(run)]) != 0
    assert main(["demo", "--quiet", "--steps", "3", "--output-dir", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["demo", "--quiet", "--steps", "3", "--output-dir", str(run), "--resume"]) == 0
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
