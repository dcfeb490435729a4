"""csv_latency: exact at measured points, bilinear between them, and never a guess beyond them."""

from __future__ import annotations

import textwrap

import pytest
import torch

from lcpress import Dense, LayerSpec, LowRank, trace
pytest.importorskip("lcpress_tucker", reason="install the package: pip install -e examples/lcpress-tucker")

from lcpress_tucker import CsvLatency, TableError, Tucker2, example_table, read_table  # noqa: E402

HEADER = "device,kind,in_channels,out_channels,kernel,stride,padding,dilation,groups,batch,height,width,latency_ms\n"
GRID = HEADER + textwrap.dedent("""\
    dev,conv2d,8,8,3x3,1x1,1x1,1x1,1,1,6,6,1.0
    dev,conv2d,8,16,3x3,1x1,1x1,1x1,1,1,6,6,2.0
    dev,conv2d,16,8,3x3,1x1,1x1,1x1,1,1,6,6,3.0
    dev,conv2d,16,16,3x3,1x1,1x1,1x1,1,1,6,6,5.0
    dev,conv2d,4,8,1x1,1x1,0x0,1x1,1,1,6,6,0.25
    dev,conv2d,4,16,1x1,1x1,0x0,1x1,1,1,6,6,0.5
    dev,conv2d,8,8,1x1,1x1,0x0,1x1,1,1,6,6,0.5
    dev,conv2d,8,16,1x1,1x1,0x0,1x1,1,1,6,6,1.0
    dev,conv2d,16,8,1x1,1x1,0x0,1x1,1,1,6,6,1.0
    dev,linear,64,10,1x1,1x1,0x0,1x1,1,4,1,1,0.125
""")


def conv(cin, cout, k=3, calls=1):
    return LayerSpec("conv2d", cin, cout, (1, cin, 6, 6), kernel_size=(k, k), padding=(k // 2, k // 2), calls=calls)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "dev.csv"
    path.write_text("# device: a test grid\n" + GRID)
    return CsvLatency(CsvLatency.Options(table=str(path)))


def test_measured_points_are_returned_exactly(model):
    assert model.cost(conv(8, 16), Dense()) == 2.0
    assert model.cost(conv(16, 16, calls=3), Dense()) == 15.0  # a layer called three times costs three calls


def test_between_points_is_bilinear(model):
    assert model.cost(conv(12, 8), Dense()) == pytest.approx(2.0)  # halfway between 1 and 3
    assert model.cost(conv(12, 12), Dense()) == pytest.approx((1 + 2 + 3 + 5) / 4)
    assert model.cost(conv(10, 16), Dense()) == pytest.approx(2.0 + 0.25 * 3.0)


def test_forms_are_priced_by_their_primitives(model):
    # Tucker2(in 8, out 8) of a 16→8 conv: 1×1 16→8, 3×3 8→8, 1×1 8→8
    assert model.cost(conv(16, 8), Tucker2(8, 8)) == pytest.approx(1.0 + 1.0 + 0.5)
    # low rank 12 of a 8→16 conv: 3×3 8→12 (between 1.0 and 2.0), then 1×1 12→16 is not measured
    with pytest.raises(TableError, match=r"\(in, out\) = \(16, 16\) was not measured"):
        model.cost(conv(8, 16), LowRank(12))


def test_extrapolation_is_refused_with_what_to_measure(model):
    with pytest.raises(TableError, match=r"in_channels = 32 is outside the measured range 8–16 .*never extrapolates"):
        model.cost(conv(32, 8), Dense())
    with pytest.raises(TableError, match=r"out_channels = 4 is outside the measured range 8–16"):
        model.cost(conv(8, 4), Dense())


def test_unmeasured_configuration_is_refused(model):
    strided = conv(8, 8).with_(stride=(2, 2))
    with pytest.raises(TableError, match=r"no measurement of a conv2d 3x3 stride 2x2 padding 1x1 .*input 6x6"):
        model.cost(strided, Dense())
    with pytest.raises(TableError, match=r"no measurement of a conv2d .* batch 8"):
        CsvLatency(CsvLatency.Options(table=model.options.table, batch_size=8)).cost(conv(8, 8), Dense())


def test_an_attention_core_is_refused_with_what_to_use_instead(model):
    core = LayerSpec("attention", 64, 64, (1, 4, 64), groups=2, bias=False)
    with pytest.raises(TableError, match=r"no rows for 'attention' layers .* cpu_latency or flops"):
        model.cost(core, Dense())


def test_linear_rows_count_every_leading_dimension(model):
    assert model.cost(LayerSpec("linear", 64, 10, (4, 64)), Dense()) == 0.125
    assert model.cost(LayerSpec("linear", 64, 10, (2, 2, 64)), Dense()) == 0.125
    at_batch_4 = CsvLatency(CsvLatency.Options(table=model.options.table, batch_size=4))
    assert at_batch_4.cost(LayerSpec("linear", 64, 10, (1, 64)), Dense()) == 0.125


def test_several_devices_need_the_device_option(tmp_path):
    path = tmp_path / "two.csv"
    path.write_text(GRID + "other,conv2d,8,8,3x3,1x1,1x1,1x1,1,1,6,6,9.0\n")
    with pytest.raises(TableError, match=r"several devices \(dev, other\); choose one with the 'device' option"):
        read_table(path)
    assert CsvLatency(CsvLatency.Options(table=str(path), device="other")).cost(conv(8, 8), Dense()) == 9.0
    reason = CsvLatency(CsvLatency.Options(table=str(path), device="phone")).unavailable_reason()
    assert "no rows for device 'phone'; it holds dev, other" in reason


@pytest.mark.parametrize("text,message", [
    (HEADER.replace(",groups", "") + "dev,conv2d,8,8,3x3,1x1,1x1,1x1,1,6,6,1.0\n", r"missing column\(s\) groups"),
    (HEADER + "dev,conv2d,8,8,3by3,1x1,1x1,1x1,1,1,6,6,1.0\n", r"data row 1: expected HxW \(e.g. 3x3\), got '3by3'"),
    (GRID + "dev,conv2d,8,8,3x3,1x1,1x1,1x1,1,1,6,6,-1\n", r"data row 11: latency_ms must be a finite, non-negative"),
    (HEADER + "dev,conv3d,8,8,3x3,1x1,1x1,1x1,1,1,6,6,1.0\n", r"kind must be linear or conv2d"),
])
def test_a_bad_table_is_reported_by_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TableError, match=message):
        read_table(path)


def test_missing_table_makes_the_model_unavailable(tmp_path):
    reason = CsvLatency(CsvLatency.Options(table=str(tmp_path / "none.csv"))).unavailable_reason()
    assert "does not exist" in reason


def test_passes_the_conformance_kit(model, lcpress_conformance):
    specs = [conv(8, 8), conv(16, 16, calls=2), conv(12, 12)]
    lcpress_conformance.cost_model(CsvLatency, {"table": model.options.table}, specs=specs, forms=[Dense()])
    lcpress_conformance.cost_model(CsvLatency, {"table": model.options.table}, specs=[conv(16, 8)],
                                   forms=[Dense(), Tucker2(8, 8)])


def test_example_table_covers_the_digits_cnn_and_its_tucker_forms():
    from lcpress import digits_cnn

    graph = trace(digits_cnn(), torch.randn(1, 1, 8, 8))
    for batch in (None, 32):
        model = CsvLatency(CsvLatency.Options(batch_size=batch))
        assert model.unavailable_reason() is None and model.table.source == str(example_table())
        dense = {name: model.cost(spec, Dense()) for name, spec in graph.specs.items()}
        assert all(v > 0 for v in dense.values())
        for name in ("2", "5"):  # the layers the example config decomposes, at every candidate rank pair
            spec = graph.specs[name]
            for a in range(8, spec.out_channels, 8):
                for b in range(8, spec.in_channels, 8):
                    assert model.cost(spec, Tucker2(b, a)) > 0
        assert model.cost(graph.specs["5"], Tucker2(8, 8)) < dense["5"]
