"""Saving and loading realized models: round trips, and damaged files refused safely."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import lcpress
from lcpress import CheckpointError
from lcpress.cli import main


class Custom(nn.Module):
    """A model with its own forward: loading needs the class."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _compressed_custom():
    torch.manual_seed(0)
    model = Custom()
    x = torch.randn(2, 3, 6, 6)
    lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 4}}], "schedule": {"steps": 0}},
                     example_input=x)
    return model, x


def _compressed_sequential(shape: str = "channel"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(3, 4, 8, 8)
    options = {"rank": 3, "rank_multiple": 1, "shape": shape}
    lcpress.compress(model, {"tasks": [{"layers": ["0", "4"], "options": options}], "schedule": {"steps": 0}},
                     example_input=x)
    return model, x


def test_round_trip_with_architecture(tmp_path):
    model, x = _compressed_custom()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    loaded = lcpress.load(path, model=Custom())
    assert isinstance(loaded.conv, nn.Sequential) and loaded.conv[0].out_channels == 4
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("shape", ["channel", "input"])
def test_round_trip_without_the_code(tmp_path, shape):
    model, x = _compressed_sequential(shape)
    path = lcpress.save(model, tmp_path / "m.safetensors")
    loaded = lcpress.load(path)
    assert type(loaded) is nn.Sequential
    assert [type(m).__name__ for m in loaded[0]] == [type(m).__name__ for m in model[0]]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [layer["name"] for layer in loaded.lcpress_layers] == ["0", "4"]


@pytest.mark.parametrize("padding,mode", [("same", "zeros"), ("same", "reflect"), ((1, 2), "circular")])
def test_a_spatially_split_conv_keeps_its_padding_through_a_round_trip(tmp_path, padding, mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, (3, 5), padding=padding, padding_mode=mode), nn.ReLU(), nn.Flatten())
    x = torch.randn(2, 4, 7, 9)
    dense = model(x)
    lcpress.compress(model, {"tasks": [{"layers": ["0"], "options": {"rank": 3, "shape": "spatial"}}],
                             "schedule": {"steps": 0}}, example_input=x)
    loaded = lcpress.load(lcpress.save(model, tmp_path / "m.safetensors"))
    assert [(m.padding, m.padding_mode) for m in loaded[0]] == [(m.padding, m.padding_mode) for m in model[0]]
    with torch.no_grad():
        assert loaded(x).shape == dense.shape and torch.equal(loaded(x), model(x))



def test_a_model_compressed_twice_quantizes_every_thin_layer_and_round_trips(tmp_path):
    """Low rank, then quantize '*': the 1×1 stages are quantized too, and the file loads into the original class."""
    model, x = _compressed_custom()
    with torch.no_grad():
        before = model(x)
    config = {"tasks": [{"layers": ["*"], "scheme": "quantize", "options": {"k": 4}}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x)
    assert sorted(r.name for r in result.records) == ["conv.0", "conv.1", "fc.0", "fc.1"]
    assert all(r.realized for r in result.records)
    assert [r["name"] for r in model.lcpress_layers] == ["conv", "fc", "conv.0", "conv.1", "fc.0", "fc.1"]
    with torch.no_grad():
        after = model(x)
    assert not torch.equal(after, before)
    assert all(len(torch.unique(s.tensors['codebook'])) <= 4 for s in result.states)
    loaded = lcpress.load(lcpress.save(model, tmp_path / "m.safetensors"), model=Custom())
    assert type(loaded.conv[1]).__name__ == type(model.conv[1]).__name__ != "PointwiseConv2d"
    with torch.no_grad():
        assert torch.equal(loaded(x), after)


_HALF_SCHEMES = {"low_rank": {"rank": 4, "rank_multiple": 1}, "prune": {"keep": 300}, "quantize": {"k": 4}}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scheme", sorted(_HALF_SCHEMES))
def test_a_half_precision_model_compresses_and_round_trips_in_its_dtype(tmp_path, dtype, scheme):
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5))  # noqa: E731
    model = make().to(dtype)
    x = torch.randn(3, 32, dtype=dtype)
    config = {"tasks": [{"layers": ["0"], "scheme": scheme, "options": _HALF_SCHEMES[scheme]}], "schedule": {"steps": 0}}
    result = lcpress.compress(model, config, example_input=x)
    assert result.records[0].realized
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {dtype}
    path = lcpress.save(model, tmp_path / "m.safetensors")
    for loaded in (lcpress.load(path), lcpress.load(path, model=make())):
        assert {t.dtype for t in loaded.state_dict().values() if t.is_floating_point()} == {dtype}
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def test_integer_codes_stored_as_floats_are_refused(tmp_path):
    from lcpress.io.files import read_file, write_file

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5))
    lcpress.compress(model, {"tasks": [{"layers": ["0"], "scheme": "quantize", "options": {"k": 4}}],
                             "schedule": {"steps": 0}}, example_input=torch.randn(1, 32))
    tensors, manifest = read_file(lcpress.save(model, tmp_path / "m.safetensors"))
    codes = next(k for k, v in tensors.items() if not v.is_floating_point())
    tensors[codes] = tensors[codes].float()
    write_file(tmp_path / "bad.safetensors", tensors, manifest)
    with pytest.raises(CheckpointError, match=f"{codes}.*stored as .*float32.*holds .*uint8"):
        lcpress.load(tmp_path / "bad.safetensors")

def _tied_language_model():
    """A token table whose matrix the output layer shares (as GPT-2's lm_head does), between two Linear layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 50))
    model[3].weight = model[0].weight
    return model


@pytest.mark.parametrize("rebuilt", [True, False], ids=["from-the-file", "into-the-class"])
def test_tied_weights_save_once_and_load_tied(tmp_path, rebuilt):
    model = _tied_language_model()
    tokens = torch.randint(0, 50, (4, 7))
    lcpress.compress(model, {"tasks": [{"layers": ["*"], "options": {"rank": 4, "rank_multiple": 1}}],
                             "schedule": {"steps": 0}}, example_input=tokens)
    assert isinstance(model[1], nn.Sequential)  # the untied Linear layer is compressed; the tied pair stays dense
    path = lcpress.save(model, tmp_path / "m.safetensors")
    stored, manifest = lcpress.io.files.read_file(path)
    assert manifest["tied"] == {"3.weight": "0.weight"} and "3.weight" not in stored
    loaded = lcpress.load(path, model=None if rebuilt else _tied_language_model())
    assert loaded[3].weight is loaded[0].weight  # one parameter, as saved: an optimizer updates it once
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_a_submodule_under_two_names_saves_and_stays_one_module(tmp_path):
    torch.manual_seed(0)
    block = nn.Linear(12, 12)
    model = nn.Sequential(block, nn.ReLU(), block)
    x = torch.randn(3, 12)
    path = lcpress.save(model, tmp_path / "m.safetensors")
    loaded = lcpress.load(path, model=nn.Sequential(block := nn.Linear(12, 12), nn.ReLU(), block))
    assert loaded[0] is loaded[2] and loaded[0].weight is loaded[2].weight
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    rebuilt = lcpress.load(path)
    assert rebuilt[0].weight is rebuilt[2].weight
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_a_manifest_tying_names_the_file_does_not_hold_is_refused(tmp_path):
    from lcpress.io.files import read_file, write_file

    path = lcpress.save(_tied_language_model(), tmp_path / "m.safetensors")
    tensors, manifest = read_file(path)
    manifest["tied"] = {"3.weight": "9.weight"}
    write_file(tmp_path / "bad.safetensors", tensors, manifest)
    with pytest.raises(CheckpointError, match="ties '3.weight' to '9.weight'"):
        lcpress.load(tmp_path / "bad.safetensors")


def test_custom_model_without_architecture_says_what_to_pass(tmp_path):
    model, _ = _compressed_custom()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"Custom.*lcpress.load\(path, model=MyModel\(\)\)"):
        lcpress.load(path)


def test_wrong_architecture_is_refused(tmp_path):
    model, _ = _compressed_custom()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    other = Custom()
    other.fc = nn.Linear(16 * 6 * 6, 7)
    with pytest.raises(CheckpointError, match="layer 'fc' of the given model does not match"):
        lcpress.load(path, model=other)


class CustomHead(Custom):
    """Custom with a head of another size: the file's compressed conv fits, its dense head does not."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16 * 6 * 6, 7)


@pytest.mark.parametrize("make, options, message", [
    (CustomHead, {}, r"tensor 'fc\.weight' is stored as \(5, 576\)"),
    (Custom, {"map_location": "meta"}, "onto the meta device"),
])
def test_a_refused_load_leaves_the_given_model_as_it_was(tmp_path, make, options, message):
    """The compressed layers are swapped in before the file's tensors are checked; a refusal puts them back."""
    torch.manual_seed(0)
    model, x = Custom(), torch.randn(2, 3, 6, 6)  # the conv is swapped in, then the dense head is refused
    lcpress.compress(model, {"tasks": [{"layers": ["conv"], "options": {"rank": 4}}], "schedule": {"steps": 0}},
                     example_input=x)
    path = lcpress.save(model, tmp_path / "m.safetensors")
    user = make()
    before = {k: v.clone() for k, v in user.state_dict().items()}
    with pytest.raises(CheckpointError, match=message):
        lcpress.load(path, model=user, **options)
    assert isinstance(user.conv, nn.Conv2d) and user.state_dict().keys() == before.keys()
    assert all(torch.equal(user.state_dict()[k], v) for k, v in before.items())
    user(x)  # it runs, on the CPU, as before


def test_save_never_overwrites_by_accident(tmp_path):
    model, _ = _compressed_sequential()
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        lcpress.save(model, path)
    assert path.read_bytes() == b"precious"
    lcpress.save(model, path, overwrite=True)
    lcpress.load(path)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    if how == "flip-payload":
        data[-5] ^= 0xFF
    elif how == "truncate":
        data = data[: len(data) // 2]
    elif how == "header-json":
        data[8 + header_len // 2] = ord("}")
    elif how == "header-length":
        data[:8] = (10**12).to_bytes(8, "little")
    elif how == "random":
        data = bytearray(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif how == "empty":
        data = bytearray()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip-payload", "truncate", "header-json", "header-length", "random", "empty"])
def test_damaged_files_give_a_clear_error(tmp_path, how):
    model, _ = _compressed_sequential()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    _damage(path, how)
    with pytest.raises(CheckpointError, match="corrupted|not a readable lcpress file"):
        lcpress.load(path)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch EXPLOITED",))


def test_a_pickle_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weights": _Exploit()}))
    with pytest.raises(CheckpointError):
        lcpress.load(path)
    torch.save({"weights": _Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        lcpress.load(tmp_path / "evil.pt")
    assert not (tmp_path / "EXPLOITED").exists()


def test_tampered_manifest_with_unknown_module_type(tmp_path):
    from safetensors.torch import load_file, save_file

    model, _ = _compressed_sequential()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    manifest = lcpress.io.modelfile.read_manifest(path)
    manifest["architecture"]["children"][0][1]["type"] = "os.system"
    tensors = load_file(str(path))
    from lcpress.io.files import payload_digest

    manifest["sha256"] = payload_digest(tensors, manifest)  # a forger can recompute the checksum
    save_file(tensors, str(path), metadata={"lcpress": json.dumps(manifest)})
    with pytest.raises(CheckpointError, match=r"model file '.*m\.safetensors': .*unknown type 'os.system'.*"
                                              r"`lcpress plugins` lists"):
        lcpress.load(path)


def _forged(path, edit):
    """The file at ``path`` with its manifest edited and its checksum recomputed, as a forger would."""
    from safetensors.torch import load_file, save_file

    from lcpress.io.files import payload_digest

    manifest = lcpress.io.modelfile.read_manifest(path)
    tensors = load_file(str(path))
    edit(manifest, tensors)
    manifest["sha256"] = payload_digest(tensors, manifest)
    save_file(tensors, str(path), metadata={"lcpress": json.dumps(manifest)})
    return path


def _set_device(manifest, tensors):
    manifest["architecture"]["children"][0][1]["args"]["device"] = "cpu"


def _child_named(name):
    def edit(manifest, tensors):
        manifest["architecture"]["children"][0][1]["children"] = [[name, {"type": "ReLU", "args": {}}]]
    return edit


def _conv_child_named(name):
    def edit(manifest, tensors):
        layer = manifest["architecture"]["children"][0][1]["children"][0][1]
        assert layer["type"] == "Conv2d"
        layer["children"] = [[name, {"type": "ReLU", "args": {}}]]
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set_device, r"args\.device: not a constructor argument a model file may set"),
    (_child_named("_parameters"), r"'_parameters' is not a submodule name"),
    (_child_named("forward"), r"'forward' is not a submodule name"),
    (_child_named("a.b"), r"'a\.b' is not a submodule name"),
    (_conv_child_named("in_channels"), r"its child 'in_channels': attribute 'in_channels' already exists"),
])
def test_a_forged_architecture_is_refused_before_anything_is_allocated(tmp_path, edit, message):
    """device= would build the layer for real past the meta-device build; a child under a module's own attribute
    would replace its state."""
    model, _ = _compressed_sequential()
    path = _forged(lcpress.save(model, tmp_path / "m.safetensors"), edit)
    with pytest.raises(CheckpointError, match=message):
        lcpress.load(path)


def test_a_codec_larger_than_its_layer_is_refused_at_load(tmp_path):
    """A few-KB file whose sparse 3×4 layer claims a 2²⁰×2²⁰ weight with one nonzero: every stored tensor has the
    size the claim implies, so only the codec's shape against its layer's tells; refused at load, not at the first
    forward (which would allocate 4 TB)."""
    from lcpress.nn.bitpack import bits_for, pack_bits
    from lcpress.nn.codecs import DecodedLinear, SparseWeight

    w = torch.zeros(3, 4)
    w[0, 1] = 1.0
    model = nn.Sequential(DecodedLinear.of(nn.Linear(4, 3), [SparseWeight.of(w)]))
    side = 2**20

    def grow(manifest, tensors):
        codec = manifest["architecture"]["children"][0][1]["children"][0][1]["children"][0][1]
        codec["args"].update(shape=[side, side], nonzeros=1)
        tensors["0.codecs.0.positions"] = pack_bits(torch.tensor([5]), bits_for(side * side))
        tensors["0.codecs.0.values"] = torch.ones(1)

    path = _forged(lcpress.save(model, tmp_path / "m.safetensors"), grow)
    with pytest.raises(CheckpointError, match=r"layer '0' holds a weight of shape \(3, 4\), but the file decodes "
                                              r"one of \(1048576, 1048576\)"):
        lcpress.load(path)


def test_an_alias_that_is_not_the_same_layer_is_refused_and_the_model_kept(tmp_path):
    model, x = _compressed_custom()
    path = lcpress.save(model, tmp_path / "m.safetensors")

    def alias(manifest, tensors):
        manifest["layers"][0]["aliases"] = ["fc.in_features"]

    _forged(path, alias)
    torch.manual_seed(1)
    user = Custom()
    with pytest.raises(CheckpointError, match=r"names 'fc\.in_features' as another name of layer 'conv'"):
        lcpress.load(path, model=user)
    assert user.fc.in_features == 576 and isinstance(user.conv, nn.Conv2d)
    user(x)


def test_info_command_prints_the_manifest(tmp_path, capsys):
    model, _ = _compressed_sequential()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "loads without the model's code: yes" in out and "low_rank" in out and "rank=3" in out
    (tmp_path / "run").mkdir()
    assert main(["info", str(tmp_path / "run")]) == 2
    assert "is a folder without a model.safetensors" in capsys.readouterr().err
    lcpress.save(model, tmp_path / "run" / "model.safetensors")
    assert main(["info", str(tmp_path / "run")]) == 0  # a run folder stands for its model file
    assert "rank=3" in capsys.readouterr().out


def test_info_prints_a_forged_files_text_as_text(tmp_path, capsys):
    """A terminal control sequence in a version string could print a fake "loads …: yes" over the real line."""
    model, _ = _compressed_sequential()

    def forge(manifest, tensors):
        manifest["lcpress_version"] = "0.2\x1b[2K\nloads without the model's code: yes\x1b[8m"
        manifest["layers"][0]["form"] = {"parts": 5}

    path = _forged(lcpress.save(model, tmp_path / "m.safetensors"), forge)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2K" in out and "unreadable form 5" in out


def test_a_write_that_fails_leaves_the_file_as_it_was(tmp_path):
    from lcpress.atomic import write_text_atomic
    from lcpress.atomic import replacing

    target = tmp_path / "run.json"
    write_text_atomic(target, "before")
    with pytest.raises(RuntimeError, match="disk full"), replacing(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no temporary file left behind
    write_text_atomic(target, "after")
    assert target.read_text() == "after" and len(list(tmp_path.iterdir())) == 1


def test_a_file_saved_by_lcpress_0_1_still_loads_and_computes_the_same():
    """tests/data/model-0.1.0.safetensors: low rank, additive, quantized and row-pruned layers, saved by 0.1.0."""
    from safetensors.torch import load_file

    data = Path(__file__).parent / "data"
    model = lcpress.load(data / "model-0.1.0.safetensors")
    io = load_file(str(data / "model-0.1.0.io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(io["input"]), io["output"])
    assert [layer["realized"] for layer in model.lcpress_layers] == [True, False, True, True]


def test_a_safetensors_file_lcpress_did_not_write_says_how_to_load_it(tmp_path):
    from safetensors.torch import save_file

    save_file(nn.Linear(3, 4).state_dict(), str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match=r"a safetensors file lcpress did not write .*model.load_state_dict"):
        lcpress.load(tmp_path / "plain.safetensors")


def test_every_constructor_argument_that_changes_a_rebuilt_layer_round_trips(tmp_path):
    """Rebuilt without the model's code, a pooling's divisor_override or a LayerNorm without bias computes as saved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AvgPool2d(2, divisor_override=1),
                          nn.MaxPool2d(1, return_indices=False), nn.Flatten(), nn.LayerNorm(64, bias=False),
                          nn.Dropout(0.1, inplace=True), nn.Linear(64, 8))
    x = torch.randn(3, 2, 8, 8)
    lcpress.compress(model, {"tasks": [{"layers": ["6"], "options": {"rank": 2, "rank_multiple": 1}}],
                             "schedule": {"steps": 0}}, example_input=x, progress=False)
    loaded = lcpress.load(lcpress.save(model, tmp_path / "m.safetensors")).eval()
    assert loaded[1].divisor_override == 1 and loaded[4].bias is None and loaded[5].inplace
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_a_model_compressed_inside_data_parallel_saves_loads_and_exports_as_the_plain_model(tmp_path):
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    wrapped = nn.DataParallel(net())
    lcpress.compress(wrapped, {"tasks": [{"layers": ["module.0"], "options": {"rank": 4, "rank_multiple": 1}}],
                               "schedule": {"steps": 0}}, example_input=torch.randn(2, 16), progress=False)
    path = lcpress.save(wrapped, tmp_path / "m.safetensors")
    assert [layer["name"] for layer in lcpress.io.modelfile.read_manifest(path)["layers"]] == ["0"]
    x = torch.randn(3, 16)
    with torch.no_grad():
        for loaded in (lcpress.load(path), lcpress.load(path, model=net()), lcpress.load(path, model=nn.DataParallel(net()))):
            torch.testing.assert_close(loaded(x), wrapped(x), rtol=0, atol=0)


def test_layers_loaded_into_a_model_in_eval_mode_are_in_eval_mode(tmp_path):
    model, _ = _compressed_custom()
    path = lcpress.save(model, tmp_path / "m.safetensors")
    loaded = lcpress.load(path, model=Custom().eval())
    assert not any(m.training for m in loaded.modules())
