"""Run reports: tables, the self-contained HTML, running runs, missing pieces."""

from __future__ import annotations

import base64
import copy
import json
import sys
from html.parser import HTMLParser

import pandas as pd
import pytest

import lcpress
from lcpress import LcpressError
from lcpress.cli import main
from lcpress.runs.demo import digits_loaders
from lcpress.reporting.report import write_report

CONFIG = {
    "tasks": [{"layers": ["1", "3"], "options": {"rank_multiple": 4}, "target": {"cost": "flops", "ratio": 0.4}}],
    "schedule": {"mu0": 1e-2, "factor": 1.5, "steps": 2},
    "train": {"epochs": 1, "lr": 0.02},
}


@pytest.fixture(scope="module")
def finished_run(dense_mlp, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "finished"
    result = lcpress.compress(copy.deepcopy(dense_mlp), dict(CONFIG, output_dir=str(run)),
                              loaders=digits_loaders(64, 0), progress=False)
    return run, result


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag == "table":
            self.tables += 1
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def test_finished_run_report_is_self_contained_and_its_images_load(finished_run):
    from matplotlib.image import imread

    run, result = finished_run
    files = write_report(run)
    page = _Page()
    page.feed(files.html.read_text())
    page.close()
    assert page.external == []  # nothing outside the file
    assert len(page.images) == 3 and page.tables >= 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        pixels = imread(__import__("io").BytesIO(data), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert sorted(p.name for p in files.images) == ["report-costs.png", "report-lc.png", "report-ranks.png"]
    markdown = files.markdown.read_text()
    for image in files.images:
        assert f"]({image.name})" in markdown and image.read_bytes().startswith(b"\x89PNG")
    # the table is the run's layers.csv, and the totals row says the target was met
    table = pd.read_csv(files.csv, dtype={"layer": str})
    pd.testing.assert_frame_equal(table, pd.read_csv(run / "layers.csv", dtype={"layer": str}))
    assert list(table["layer"]) == ["1", "3", "5"]
    assert table.loc[table["layer"] == "1", "form_rank"].iloc[0] == result.layers.loc[0, "form_rank"]
    ratio = table["flops_after"].sum() / table["flops_before"].sum()
    assert f"| flops | {int(table['flops_before'].sum()):,} | {int(table['flops_after'].sum()):,} | {ratio:.1%} |" in markdown
    assert "Finished run" in markdown and "accuracy: dense" in markdown
    assert "| 1 | 64×64 | low_rank | rank" in markdown


def test_layer_table_lists_form_fields_and_full_rank(finished_run):
    _, result = finished_run
    row = result.layers.set_index("layer").loc["1"]
    assert row["form"] == f"rank {int(row['form_rank'])}" and row["form_shape"] == "channel"
    assert row["full_rank"] == 64
    assert pd.isna(result.layers.set_index("layer").loc["5", "form_rank"])  # not a task: dense, no rank


def test_running_run_report_prices_the_checkpoint(dense_mlp, tmp_path, power_cut):
    run = tmp_path / "running"
    with power_cut(at=1):
        lcpress.compress(copy.deepcopy(dense_mlp), dict(CONFIG, output_dir=str(run)), loaders=digits_loaders(64, 0),
                         progress=False)
    assert not (run / "layers.csv").exists()
    files = write_report(run, plots=False)
    table = pd.read_csv(files.csv, dtype={"layer": str})
    history = pd.read_csv(run / "history.csv")
    last = history.iloc[-1]
    assert last["step"] == 1
    # priced from θ in the checkpoint: the totals equal what the engine recorded for that step
    assert table["params_after"].sum() == last["cost_params"]
    assert table["flops_after"].sum() == last["cost_flops"]
    markdown = files.markdown.read_text()
    assert "stopped after LC step 1 of 2; no process is running it" in markdown  # the power cut ended its process
    assert "the checkpoint after LC step 1" in markdown and "realized" not in markdown.split("## Per layer")[1].split("\n\n")[2]
    with lcpress.io.rundir.RunDirectory(run).locked():  # a live process holds the run: it is running
        markdown = write_report(run, plots=False).markdown.read_text()
    assert "Run in progress" in markdown and "LC step 1 of 2 done" in markdown


def test_a_damaged_checkpoint_is_named_and_the_rest_of_the_report_stands(dense_mlp, tmp_path, power_cut):
    run = tmp_path / "running"
    with power_cut(at=1):
        lcpress.compress(copy.deepcopy(dense_mlp), dict(CONFIG, output_dir=str(run)), loaders=digits_loaders(64, 0),
                         progress=False)
    checkpoint = run / "checkpoint.safetensors"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-100])  # cut short, as by a full disk
    markdown = write_report(run, plots=False).markdown.read_text()
    not_shown = markdown.split("## Not shown")[1]
    assert "the per-layer table and measured sensitivity" in not_shown and "is not a readable lcpress file" in not_shown
    assert "## LC history" in markdown and "## Per layer" not in markdown


def test_report_says_what_is_missing(dense_mlp, tmp_path):
    run = tmp_path / "old"
    lcpress.compress(copy.deepcopy(dense_mlp), dict(CONFIG, output_dir=str(run)), loaders=digits_loaders(64, 0),
                     progress=False)
    info = json.loads((run / "run.json").read_text())
    del info["plan"]
    info["status"] = "running"  # as an unfinished run of an older lcpress would look
    (run / "run.json").write_text(json.dumps(info))
    markdown = write_report(run, plots=False).markdown.read_text()
    assert "## Not shown" in markdown and "holds no plan of layers and tasks" in markdown
    assert "## LC history" in markdown


def test_missing_matplotlib_is_a_clear_error_or_a_note(finished_run, monkeypatch):
    run, _ = finished_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(LcpressError, match=r"pip install 'lcpress\[demo\]'"):
        write_report(run, plots=True)
    files = write_report(run)  # plots=None: tables only, and the report says why
    assert files.images == [] and "matplotlib is not installed" in files.markdown.read_text()


def test_report_cli(finished_run, tmp_path, capsys):
    run, _ = finished_run
    assert main(["report", str(run), "--no-plots"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not an lcpress run directory" in capsys.readouterr().err
    notes = tmp_path / "notes"  # a folder of the user's that happens to hold a history.csv: its report.md is theirs
    notes.mkdir()
    (notes / "history.csv").write_text("step,mu,train_loss\n0,1,0.5\n")
    (notes / "report.md").write_text("my own notes")
    assert main(["report", str(notes), "--no-plots"]) == 2
    assert "no run.json of lcpress's" in capsys.readouterr().err
    assert (notes / "report.md").read_text() == "my own notes" and not (notes / "report.html").exists()


def test_per_step_lines_go_to_stderr_unless_quiet(dense_mlp, monkeypatch, capsys):
    monkeypatch.delenv("LCPRESS_QUIET", raising=False)
    config = dict(CONFIG, schedule={"mu0": 1e-2, "factor": 1.5, "steps": 2})
    lcpress.compress(copy.deepcopy(dense_mlp), config, loaders=digits_loaders(64, 0), progress=True)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("LC step")]
    assert [line.split(":")[0] for line in lines] == ["LC step 0/2 (direct compression)", "LC step 1/2", "LC step 2/2"]
    assert "μ=" in lines[1] and "loss=" in lines[1] and "metric=" in lines[1]
    assert "\r" not in captured.err  # no bars: stderr is not a terminal here
    assert captured.out == ""
    lcpress.compress(copy.deepcopy(dense_mlp), config, loaders=digits_loaders(64, 0), progress=False)
    assert capsys.readouterr().err == ""



def test_bars_show_in_a_jupyter_kernel_though_its_stderr_is_no_terminal(monkeypatch):
    import sys
    import types

    from lcpress.progress import bars_enabled

    monkeypatch.delenv("LCPRESS_QUIET", raising=False)
    assert not bars_enabled()  # pytest's stderr is no terminal, and no kernel runs

    class ZMQInteractiveShell:  # the shell class of an IPython kernel (a terminal IPython is another)
        pass

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=ZMQInteractiveShell))
    assert bars_enabled() and not bars_enabled(False)
    monkeypatch.setenv("LCPRESS_QUIET", "1")
    assert not bars_enabled()

def test_forms_without_a_rank_get_their_own_columns_and_no_rank_bar(finished_run, tmp_path):
    """Schemes other than low rank (pruning, quantization) carry other form fields: shown, and plotted apart."""
    import shutil

    from matplotlib.image import imread

    from lcpress.reporting.tables import format_table

    run, _ = finished_run
    copy_dir = tmp_path / "mixed"
    shutil.copytree(run, copy_dir)
    table = pd.read_csv(copy_dir / "layers.csv", dtype={"layer": str})
    # layer 3 as a pruned layer (no rank), layer 5 as a quantized one; layer 1 keeps its rank
    table.loc[table["layer"] == "3", ["form", "form_rank", "form_shape"]] = ["sparse 900", float("nan"), None]
    table["form_nonzeros"] = [float("nan"), 900.0, float("nan")]
    table["form_bits"] = [float("nan"), float("nan"), 4.0]
    table.loc[table["layer"] == "5", "form"] = "4-bit"
    table.to_csv(copy_dir / "layers.csv", index=False)

    files = write_report(copy_dir)
    markdown = files.markdown.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| layer | shape"))
    assert header.startswith("| layer | shape | scheme | form | rank | nonzeros | bits | realized |")
    rank = int(table.loc[0, "form_rank"])
    assert f"| 1 | 64×64 | low_rank | rank {rank} | {rank} | — | — |" in markdown
    assert "| 3 | 64×64 | low_rank | sparse 900 | — | 900 | — |" in markdown
    assert "| 5 | 10×64 | — | 4-bit | — | — | 4 |" in markdown
    text = format_table(table)
    assert "nonzeros" in text and "bits" in text and "form_" not in text
    assert sorted(p.name for p in files.images) == ["report-costs.png", "report-forms.png", "report-lc.png",
                                                    "report-ranks.png"]
    for image in files.images:
        assert imread(image).ndim == 3

    from lcpress.reporting.plots import form_fields_figure, rank_figure

    fig = rank_figure(table)  # layer 1 only: 3 has no rank, 5 is not dense
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["1"]
    assert "2 layers without a rank not shown" in fig.axes[0].get_title()
    fig = form_fields_figure(table, ["form_nonzeros", "form_bits"])
    assert [ax.get_title() for ax in fig.axes] == ["nonzeros", "bits"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["3"]
    assert rank_figure(table.assign(form_rank=float("nan"))) is None


def test_an_absolute_target_is_reported_in_its_own_units(caplog):
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    config = {"tasks": [{"layers": ["*"], "target": {"cost": "flops", "value": 100}}], "schedule": {"steps": 0}}
    with caplog.at_level("WARNING", logger="lcpress.engine"):
        result = lcpress.compress(model, config, example_input=torch.randn(1, 20), progress=False)
    assert "flops ≤ 100 FLOPs (0.9% of dense) is out of reach" in caplog.text and "Raise the target value" in caplog.text
    line = next(x for x in result.summary().splitlines() if x.startswith("tasks[0] target"))
    assert line.startswith("tasks[0] target: flops ≤ 100; achieved 3,904 (34.7% of dense)")


@pytest.mark.parametrize("value, quiet", [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)])
def test_lcpress_quiet_reads_zero_and_false_as_off(monkeypatch, value, quiet):
    from lcpress.progress import quiet_env

    monkeypatch.setenv("LCPRESS_QUIET", value)
    assert quiet_env() is quiet


def test_the_report_names_fine_tuning_and_the_runs_warnings(dense_mlp, tmp_path):
    run = tmp_path / "tuned"
    config = dict(CONFIG, output_dir=str(run), schedule={"mu0": 1e-5, "factor": 1.0, "steps": 1},
                  finetune={"steps": 1})  # a μ that never grows: the run ends far from Δ(θ) and says so
    result = lcpress.compress(copy.deepcopy(dense_mlp), config, loaders=digits_loaders(64, 0), progress=False)
    assert any("did not converge" in w for w in result.warnings)
    markdown = write_report(run, plots=False).markdown.read_text()
    assert "finetune: 1 passes over the training data of the realized model" in markdown
    assert "after 1 fine-tuning passes of the realized model (LC's last step:" in markdown
    assert "## Warnings" in markdown and "LC did not converge" in markdown.split("## Warnings")[1]


def test_a_report_that_fails_while_writing_keeps_the_one_before(finished_run, monkeypatch):
    """Report files are replaced whole: a write cut short (a full disk, a file-size limit) leaves the last one."""
    run, _ = finished_run
    files = write_report(run, plots=False)
    before = files.csv.read_text()
    original = pd.DataFrame.to_csv

    def cut_short(self, path, *args, **kwargs):
        original(self.head(1), path, *args, **kwargs)
        raise OSError(27, "File too large")

    monkeypatch.setattr(pd.DataFrame, "to_csv", cut_short)
    with pytest.raises(OSError, match="File too large"):
        write_report(run, plots=False)
    assert files.csv.read_text() == before
    assert not list(files.csv.parent.glob(".*.tmp"))


@pytest.mark.parametrize("edit, said", [
    (lambda run: _edit_info(run, sensitivity=[1, 2]), "sensitivity should be a dict"),
    (lambda run: _edit_info(run, plan={"layers": {"0": 5}, "tasks": [1]}), "plan should be a mapping of layers"),
    (lambda run: (run / "history.csv").write_text("stage,mu\nx,1\n"), "has no column of whole LC step numbers"),
])
def test_an_edited_run_folder_gives_one_line_not_a_traceback(finished_run, tmp_path, capsys, edit, said):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(finished_run[0], run)
    edit(run)
    assert main(["report", str(run), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def _edit_info(run, **fields):
    info = json.loads((run / "run.json").read_text())
    info.update(fields)
    (run / "run.json").write_text(json.dumps(info))
