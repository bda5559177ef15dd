"""Model files are safe to open: fuzzed checkpoints, artifacts and training states load as the
identical model or raise ModelFileError, within time and memory; a crafted pickle never runs."""

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lm
from lm.__main__ import main
from lm import modelfile
from lm.checkpoint import convert_legacy, load_train_state, save_model, save_train_state
from lm.compression.export import export_bytes
from lm.compression.prune import finalize, prune_model
from lm.compression.surgery import compress_model
from lm.model import LanguageModel
from lm.modelfile import ModelFileError

def _pruned(tiny_lm) -> LanguageModel:
    m = tiny_lm()
    prune_model(m, 0.9, ("embedding", "decoder"))
    finalize(m)
    return m


def _train_state(tiny_lm) -> dict:
    model = tiny_lm()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    model.train()
    logits, _ = model(torch.randint(0, 60, (5, 2)))
    logits.sum().backward()
    opt.step()
    return {"config": {"model": {"hidden_size": 8}, "lr": 0.5}, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": 1,
            "history": [{"epoch": 1, "valid_ppl": 123.4}], "elapsed": 2.5}


def _bytes_of(save, obj, tmp) -> bytes:
    save(obj, tmp)
    return tmp.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_lm) -> dict[str, bytes]:
    """Real files of every kind: checkpoints (plain, tied) and artifacts (f32, q8, q8c, sparse, TT)."""
    tmp = tmp_path_factory.mktemp("files") / "f"
    tt = compress_model(tiny_lm(), embedding={"type": "tt", "rank": 2}, lstm={"type": "tt_lstm", "rank": 2})
    save_model(tt.eval(), tmp)
    lm.load(tmp)  # the first load's imports (meta device, TT layers) happen here, outside any deadline
    return {
        "checkpoint": _bytes_of(save_model, tiny_lm(), tmp),
        "checkpoint_tied": _bytes_of(save_model, tiny_lm(tie_weights=True), tmp),
        "artifact_f32": export_bytes(tiny_lm())[0],
        "artifact_q8": export_bytes(tiny_lm(tie_weights=True), "q8")[0],
        "artifact_q8c": export_bytes(tiny_lm(), "q8c")[0],
        "artifact_sparse": export_bytes(_pruned(tiny_lm), "q8")[0],
        "artifact_sparse_f32": export_bytes(_pruned(tiny_lm))[0],
        "artifact_tt": export_bytes(tt.eval(), "q8")[0],
        "train_state": _bytes_of(save_train_state, _train_state(tiny_lm), tmp),
    }


def _load(blob: bytes, kind: str, path):
    path.write_bytes(blob)
    return load_train_state(path) if kind == "train_state" else lm.load(path)


def _same(a, b) -> bool:
    if isinstance(a, LanguageModel):
        return (isinstance(b, LanguageModel) and a.config == b.config and a.vocab == b.vocab
                and _same(a.state_dict(), b.state_dict()))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _join(header: dict, data: bytes, resign: bool) -> bytes:
    if resign:
        header["__metadata__"]["sha256"] = modelfile._digest(header, memoryview(data))
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()  # a model file's layout
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + data


KINDS = ["checkpoint", "checkpoint_tied", "artifact_f32", "artifact_q8", "artifact_q8c", "artifact_sparse",
         "artifact_sparse_f32", "artifact_tt", "train_state"]
FUZZ = settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_every_kind_round_trips(files, tmp_path, tiny_lm):
    for kind in KINDS:
        reference = _load(files[kind], kind, tmp_path / "ref")
        assert _same(reference, _load(files[kind], kind, tmp_path / "again"))
    assert _same(_load(files["checkpoint"], "checkpoint", tmp_path / "c"), tiny_lm())
    assert _same(_load(files["train_state"], "train_state", tmp_path / "s"), _train_state(tiny_lm))


@FUZZ
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_truncations_and_byte_flips(files, tmp_path, kind, data):
    blob = bytearray(files[kind])
    if data.draw(st.booleans(), "truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), "length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), "flips")):
            blob[data.draw(st.integers(0, len(blob) - 1), "at")] ^= data.draw(st.integers(1, 255), "xor")
    try:
        loaded = _load(bytes(blob), kind, tmp_path / "fuzzed")
    except ModelFileError as err:
        assert str(tmp_path / "fuzzed") in str(err)
        return
    assert _same(loaded, _load(files[kind], kind, tmp_path / "ref"))  # only a no-op edit loads (header whitespace)


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.text(max_size=8), st.lists(st.integers(-3, 10**9), max_size=4),
                        st.sampled_from([10**9, 2**62, -1, 0, 1e308, "tt", "dense", "q8c", "F64", "U8", "I64"]))


def _edit(header: dict, data) -> None:
    """One edit of the header: a tensor entry, lm's metadata document, or the metadata itself."""
    meta = header["__metadata__"]
    doc = json.loads(meta["meta"])
    where = data.draw(st.sampled_from(["tensor", "doc", "metadata"]), "where")
    if where == "tensor":
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")), "tensor")
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", None]), "field")
        if field is None:
            del header[name]
        else:
            header[name][field] = data.draw(JSON_VALUES, "value")
        return
    if where == "metadata":
        meta[data.draw(st.sampled_from(["format", "version", "kind", "sha256", "meta"]), "key")] = data.draw(
            st.sampled_from(["lm", "2", "0", "checkpoint", "artifact", "train_state", "{}", "[]", ""]), "value")
        return
    # a path into the document: descend through dicts and lists, then replace or delete
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), "deeper"):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))), "key")
        path.append((node, key))
        node = node[key]
    if path:
        parent, key = path[-1]
        if data.draw(st.booleans(), "delete"):
            del parent[key]
        else:
            parent[key] = data.draw(JSON_VALUES, "value")
    meta["meta"] = json.dumps(doc)


@FUZZ
@given(kind=st.sampled_from(KINDS), resign=st.booleans(), data=st.data())
def test_header_edits(files, tmp_path, kind, resign, data):
    """Unsigned edits are caught by the checksum; signed ones (a forger's) by the checks behind it:
    either error, or a model that the edited file really describes."""
    header, payload = _split(files[kind])
    _edit(header, data)
    try:
        loaded = _load(_join(header, payload, resign), kind, tmp_path / "edited")
    except ModelFileError as err:
        assert str(tmp_path / "edited") in str(err)
        return
    if not resign:
        assert _same(loaded, _load(files[kind], kind, tmp_path / "ref"))
    elif isinstance(loaded, LanguageModel):  # a consistent model: it runs
        loaded(torch.zeros(2, 1, dtype=torch.long))


def test_wrong_version_kind_and_foreign_files(files, tmp_path):
    header, payload = _split(files["checkpoint"])
    header["__metadata__"]["version"] = "99"
    with pytest.raises(ModelFileError, match="format version '99'; this lm reads version 1"):
        _load(_join(header, payload, True), "checkpoint", tmp_path / "v")
    with pytest.raises(ModelFileError, match="is a train_state, not a model"):
        _load(files["train_state"], "checkpoint", tmp_path / "s")
    with pytest.raises(ModelFileError, match="holds a 'checkpoint', expected train_state"):
        _load(files["checkpoint"], "train_state", tmp_path / "c")
    (tmp_path / "st").write_bytes(modelfile.safetensors.torch.save({"x": torch.ones(2)}))
    with pytest.raises(ModelFileError, match="a safetensors file without format 'lm'"):
        lm.load(tmp_path / "st")
    (tmp_path / "garbage").write_bytes(os.urandom(3000))
    with pytest.raises(ModelFileError, match="garbage: truncated or corrupted header"):
        lm.load(tmp_path / "garbage")
    with pytest.raises(ModelFileError, match="is a directory without a model file"):
        lm.load(tmp_path)


# the start of a ModelProto as torch.onnx writes it: ir_version 10, producer "pytorch", its version, an empty graph
ONNX_BYTES = b"\x08\x0a\x12\x07pytorch\x1a\x0a2.13.0+cpu:\x00"


def test_an_onnx_file_is_named_as_one(tmp_path):
    """An ONNX file, known by its contents or its name, is one lm runs with onnxruntime, not a model file (it was
    "truncated or corrupted header")."""
    for name, blob in (("model.onnx", ONNX_BYTES), ("exported.bin", ONNX_BYTES), ("model.onnx", b"\x00" * 64)):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelFileError, match=f"{name}: not an lm model file: an ONNX file .* `--runtime onnx`"):
            lm.load(tmp_path / name)


def test_a_real_onnx_file_is_named_as_one(tmp_path):
    onnx = pytest.importorskip("onnx")
    value = lambda name: onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [value("x")], [value("y")])
    (tmp_path / "model.bin").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(ModelFileError, match="model.bin: not an lm model file: an ONNX file"):
        lm.load(tmp_path / "model.bin")


def test_the_same_contents_give_the_same_bytes(files, tiny_lm, tmp_path):
    """A model file's bytes depend on its contents only (safetensors wrote the metadata in hash order, another at
    each save, so that a shipped model's sha256 could not be reproduced)."""
    assert {_bytes_of(save_model, tiny_lm(tie_weights=True), tmp_path / "m") for _ in range(6)} == {
        files["checkpoint_tied"]}
    assert {export_bytes(tiny_lm(), "q8c")[0] for _ in range(6)} == {files["artifact_q8c"]}
    assert {_bytes_of(save_train_state, _train_state(tiny_lm), tmp_path / "s") for _ in range(6)} == {
        files["train_state"]}
    meta, tensors = {"b": [1, {"y": 2, "x": 3}], "a": "z"}, {"w": torch.ones(3), "v": torch.arange(4).byte()}
    reordered = ({"a": "z", "b": [1, {"x": 3, "y": 2}]}, dict(reversed(tensors.items())))
    assert modelfile.dumps("checkpoint", meta, tensors) == modelfile.dumps("checkpoint", *reordered)


def test_a_file_laid_out_as_before_still_loads(files, tmp_path):
    """A file of safetensors' own layout (its metadata in hash order, its tensors in data order), as lm wrote before."""
    for kind in KINDS:
        header, _ = _split(files[kind])
        before = modelfile.safetensors.torch.save(modelfile.loads(files[kind]).tensors, metadata=header["__metadata__"])
        assert before != files[kind]
        assert _same(_load(before, kind, tmp_path / "before"), _load(files[kind], kind, tmp_path / "now"))


def test_a_flipped_byte_in_the_header_padding_is_caught(tmp_path):
    """The checksum covers what the header says; a padding space flipped to other whitespace, which says the same,
    is caught by the header's layout (it loaded)."""
    blob = modelfile.dumps("checkpoint", {"pad": "x"}, {"w": torch.ones(3)})
    n = int.from_bytes(blob[:8], "little")
    assert blob[8 + n - 1 : 8 + n] == b" "  # the header is padded (to a multiple of 8 bytes)
    for space in b"\t\n\r":
        flipped = blob[: 8 + n - 1] + bytes([space]) + blob[8 + n :]
        with pytest.raises(ModelFileError, match="padded: corrupted: the header's spacing or padding"):
            modelfile.loads(flipped, "padded")
    header, data = _split(blob)
    spaced = json.dumps(header, sort_keys=True).encode()  # the same header, with spaces after ':' and ','
    spaced += b" " * (-len(spaced) % 8)
    with pytest.raises(ModelFileError, match="the header's spacing or padding"):
        modelfile.loads(len(spaced).to_bytes(8, "little") + spaced + data)
    assert modelfile.loads(blob).meta == {"pad": "x"}


def _resigned(blob: bytes, edit) -> bytes:
    header, payload = _split(blob)
    doc = json.loads(header["__metadata__"]["meta"])
    payload = edit(header, doc, payload) or payload
    header["__metadata__"]["meta"] = json.dumps(doc)
    return _join(header, payload, True)


def _bomb(header, doc, payload):
    """A vocabulary that inflates a thousandfold, in place of the real one."""
    doc["config"]["vocab_size"] = 10**7
    start, end = header["__vocab__"]["data_offsets"]
    bomb = zlib.compress(b"a" * (1 << 30 if False else 1 << 26), 9)
    header["__vocab__"].update(shape=[len(bomb)], data_offsets=[start, start + len(bomb)])
    return payload[:start] + bomb  # the vocabulary is the last tensor


ALLOCATION_ATTACKS = {
    "huge_config": lambda h, d, p: d["config"].update(hidden_size=10**6, vocab_size=10**7),
    "many_layers": lambda h, d, p: d["config"].update(num_layers=64),
    "long_spec": lambda h, d, p: d["config"].update(lstm={"type": "tt_lstm", "maps": [[{}] * 4000]}),
    "vocab_bomb": _bomb,
}


def test_forged_sizes_fail_before_allocating(files, tmp_path):
    """Files whose config or vocabulary would make a trusting loader allocate gigabytes, loaded in a
    process whose data segment may grow by 48 MiB only (each file is a few kB)."""
    (tmp_path / "warm").write_bytes(files["artifact_tt"])
    paths = []
    for attack, edit in sorted(ALLOCATION_ATTACKS.items()):
        paths.append(tmp_path / attack)
        paths[-1].write_bytes(_resigned(files["artifact_q8" if attack == "long_spec" else "checkpoint"], edit))
    script = textwrap.dedent(f"""
        import resource
        import lm
        from lm.modelfile import ModelFileError
        lm.load({str(tmp_path / "warm")!r})  # the imports a load triggers take memory: before the limit
        used = int(open("/proc/self/statm").read().split()[5]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_DATA, (used + (48 << 20), resource.RLIM_INFINITY))
        for path in {[str(p) for p in paths]!r}:
            try:
                lm.load(path)
            except ModelFileError as err:
                print("refused:", err)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.count("refused:") == len(paths), done.stderr[-2000:]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_never_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"config": {}, "state_dict": _Exploit(marker)}))
    zipped = tmp_path / "zipped.pt"
    torch.save({"config": {}, "state_dict": _Exploit(marker)}, zipped)
    assert not marker.exists()
    for path in (raw, zipped):
        with pytest.raises(ModelFileError, match="torch.save \\(pickle\\) file"):
            lm.load(path)
        with pytest.raises(ModelFileError):
            load_train_state(path)
        with pytest.raises(ModelFileError, match="torch can read safely"):  # weights_only=True refuses it
            convert_legacy(path, tmp_path / "out.safetensors")
        for command in (["info", str(path)], ["eval", str(path)]):
            with pytest.raises(SystemExit) as done:
                main(command)
            assert done.value.code == 2 and "torch.save (pickle) file" in capsys.readouterr().err
    assert not marker.exists()


def test_writes_are_atomic(tmp_path, monkeypatch, tiny_lm):
    """A write that dies half-way leaves the previous file intact and no temporary behind."""
    path = tmp_path / "model.safetensors"
    save_model(tiny_lm(), path)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(modelfile.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_lm(tie_weights=True), path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def _rewritten(blob: bytes, edit) -> bytes:
    """``blob`` read, its metadata and tensors edited by ``edit(meta, tensors)``, and written again, validly signed."""
    f = modelfile.loads(blob)
    meta, tensors = copy.deepcopy(f.meta), dict(f.tensors)
    edit(meta, tensors)
    return modelfile.dumps(f.kind, meta, tensors)


def _float_shape(meta, tensors):
    meta["tensors"]["embedding.weight"]["shape"] = [float(n) for n in meta["tensors"]["embedding.weight"]["shape"]]


@pytest.mark.parametrize("kind, edit, message", [
    # each gave a KeyError, a TypeError, or loaded a tensor the table does not describe, or another tensor
    ("artifact_q8", lambda m, t: t.update({"embedding.weight:junk": torch.zeros(100)}), "parts no encoding writes"),
    ("artifact_q8", _float_shape, "does not match"),
    ("artifact_q8", lambda m, t: m["tensors"].update({"nothing": {"codec": "f32", "sparse": False}}), "does not match"),
    ("checkpoint", lambda m, t: m["aliases"].update({"decoder.bias": "decoder.bias"}), "alias"),
    ("checkpoint_tied", lambda m, t: m["aliases"].update({"lstm.layers.0.input_map.weight": "embedding.weight"}),
     "alias"),
])
def test_a_crafted_table_is_a_model_file_error(files, tmp_path, kind, edit, message):
    path = tmp_path / "crafted"
    path.write_bytes(_rewritten(files[kind], edit))
    with pytest.raises(ModelFileError, match=message):
        lm.load(path)


def test_a_tied_weight_is_stored_once_in_a_training_state(tiny_lm, tmp_path):
    # the medium_awd teacher's state held its 26 MB tied embedding twice (79 MB for a 53 MB model)
    tied, untied = tiny_lm(vocab=2000, tie_weights=True), tiny_lm(vocab=2000)
    sizes = {}
    for name, model in (("tied", tied), ("untied", untied)):
        state = {**_train_state(tiny_lm), "model": model.state_dict()}
        sizes[name] = save_train_state(state, tmp_path / name)
        got = load_train_state(tmp_path / name)
        assert _same(got, state)
    table = tied.state_dict()["embedding.weight"].numel() * 4
    assert sizes["untied"] - sizes["tied"] >= table  # the untied model's decoder weight is the extra copy
    got = load_train_state(tmp_path / "tied")["model"]
    assert got["embedding.weight"] is got["decoder.weight"]
    fresh = tiny_lm(vocab=2000, tie_weights=True, init=0.01)
    fresh.load_state_dict(got)
    assert _same(fresh.state_dict(), tied.state_dict()) and fresh.decoder.weight is fresh.embedding.weight


def test_a_training_state_saved_within_an_epoch_is_checked(tiny_lm, tmp_path):
    partial = {"epoch": 2, "step": 7, "total": 12.5, "count": 70, "seconds": 3.0, "state": (torch.zeros(2, 1, 8),) * 2}
    path = tmp_path / "state.safetensors"
    save_train_state({**_train_state(tiny_lm), "partial": partial}, path)
    got = load_train_state(path)["partial"]
    assert got["step"] == 7 and torch.equal(got["state"][0], partial["state"][0])
    save_train_state({**_train_state(tiny_lm), "epoch": -1, "partial": {**partial, "epoch": 0}}, path)
    assert load_train_state(path)["epoch"] == -1  # within the first epoch: none finished
    for bad in ({"epoch": 3}, {"step": 0}, {"count": 1.5}, {"total": float("nan")}, {"seconds": "3"}):
        save_train_state({**_train_state(tiny_lm), "partial": {**partial, **bad}}, path)
        with pytest.raises(ModelFileError, match="malformed 'partial'"):
            load_train_state(path)
    save_train_state({**_train_state(tiny_lm), "epoch": -1}, path)  # no epoch finished and none in progress
    with pytest.raises(ModelFileError, match="malformed RNG state or epoch"):
        load_train_state(path)


def test_loads_takes_any_bytes_like_and_a_kind_as_a_string(files):
    # a valid bytearray was refused after its checksum passed; a kind string matched its substrings
    blob = files["artifact_q8"]
    for data in (bytearray(blob), memoryview(blob)):
        assert modelfile.loads(data).kind == "artifact"
    assert modelfile.loads(blob, kinds="artifact").kind == "artifact"
    with pytest.raises(ModelFileError, match="expected checkpoint"):
        modelfile.loads(blob, kinds="checkpoint")
    with pytest.raises(ModelFileError):
        modelfile.loads(blob, kinds="artifacts")
    with pytest.raises(TypeError, match="bytes"):
        modelfile.loads("not bytes")


def test_a_training_state_refuses_at_save_a_key_its_loader_refuses(tmp_path):
    with pytest.raises(TypeError, match="keys"):
        save_train_state({"model": {}, "extra": {(1, 2): 3}}, tmp_path / "s")
    assert not (tmp_path / "s").exists()
