"""Every document petseg reads has one schema: a bad one is one line naming the file, the key
and the value; a mutated one (property-based, hypothesis) never gives a traceback or a hang."""

import json
import pickle
import re
import shutil
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petseg.cli import main
from petseg.clicks import parse_clicks, read_clicks
from petseg.cohort import CASE_LOG, Manifest, Shard
from petseg.documents import parse_json_text
from petseg.errors import InputError, ModelError, PetsegError
from petseg.evaluate import read_groups
from petseg.geometry import Grid
from petseg.model import MODEL_JSON, ModelFolder, build_network
from petseg.model_write import import_weights, write_model_folder
from petseg.settings import Settings
from petseg.train.data import load_splits
from petseg.train.run import read_training_state

from conftest import TINY_NETWORK

# deterministic, and no wall-clock deadline: a loaded CI machine is slower, not wrong
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
PET = Grid((30, 26, 20), (2.0, 3.0, 4.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text, text
    return text


# --- model.json --------------------------------------------------------------------------------


@pytest.fixture()
def model(tiny_model_dir, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def set_key(meta: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        meta = meta[int(key)] if isinstance(meta, list) else meta[key]
    if value is DELETE:
        del meta[last]
    else:
        meta[last] = value


DELETE = object()
BIG = "RAW:" + "9" * 5000  # a 5000-digit integer in the JSON text (Python's int() refuses it)


@pytest.mark.parametrize(
    "key, value, problem",
    [
        (
            "inference.roi_size",
            [33, 32, 32],
            "inference.roi_size [33, 32, 32] is not a multiple of the network's total stride 2",
        ),
        ("inference.roi_size", 1, "inference.roi_size: expected array, got 1"),
        ("inference.roi_size", [96.5, 96, 96], "inference.roi_size[0]: expected int, got 96.5"),
        ("inference.roi_size", [1e9, 96, 96], "inference.roi_size[0]: expected int, got 1000000000.0"),
        ("inference.roi_size", [10**30, 96, 96], "inference.roi_size[0]: expected int <= 1024"),
        ("inference.roi_size", DELETE, "inference: missing key 'roi_size'"),
        ("inference.sw_batch_size", 1.5, "inference.sw_batch_size: expected int, got 1.5"),
        ("inference.overlap", "half", "inference.overlap: expected float, got 'half'"),
        ("inference.time_budget_s", -1, "inference.time_budget_s: expected float > 0.0"),
        ("inference.threshold", 1.0, "inference.threshold: expected float < 1.0"),
        ("inference.click_removal", "false", "inference.click_removal: expected bool, got 'false'"),
        ("inference.tta", True, "inference: unknown key 'tta'"),
        ("preprocessing.target_spacing", None, "preprocessing.target_spacing: expected array, got None"),
        ("preprocessing.target_spacing", [2, 2, "RAW:1e400"], "preprocessing.target_spacing[2]: expected float <= 100"),
        ("preprocessing.target_spacing", [2, 2, BIG], "preprocessing.target_spacing[2]: expected float <= 100.0"),
        ("preprocessing.ct_window", [1024, -1024], "ct_window: must be (low, high) with high > low"),
        ("preprocessing.body_margin_mm", DELETE, "preprocessing: missing key 'body_margin_mm'"),
        ("preprocessing.channels", ["PET", "CT"], "preprocessing.channels: must be ['CT', 'PET'] or ['PET']"),
        ("folds.0.fold", "RAW:1e400", "folds[0].fold: expected int, got a number too large"),
        ("folds.0.fold", 2.7, "folds[0].fold: expected int, got 2.7"),
        ("folds.0.fold", -5, "folds[0].fold: expected int >= 0"),
        ("folds.1.fold", 0, "fold 0 is listed twice"),
        ("folds.0.file", "fold\x000.pt", "fold 0 file 'fold\\x000.pt' lies outside the model folder"),
        ("folds.0.file", "sub/../../x.pt", "fold 0 file 'sub/../../x.pt' lies outside the model folder"),
        ("folds.0.sha256", "abc", "folds[0].sha256: expected str matching"),
        ("network.kwargs.out_channels", 3, "network.kwargs.out_channels: value not allowed, got 3"),
        ("network.kwargs.strides", [2, 2], "strides [2, 2] must have one entry fewer than channels [4, 8]"),
        ("network.kwargs.in_channels", 4, "network in_channels 4 != input channels ['CT', 'PET']"),
        ("network.class", "torch.nn.Linear", "unsupported network class 'torch.nn.Linear'"),
        (
            "format",
            "petseg-model/0",
            "format is 'petseg-model/0', expected 'petseg-model/3' or 'petseg-model/2' or 'petseg-model/1'",
        ),
        ("notes", "mine", "invalid model description: object contains unknown field notes"),
    ],
)
def test_a_bad_model_json_is_one_line_naming_the_key_and_value(model, key, value, problem):
    meta = json.loads((model / MODEL_JSON).read_text())
    set_key(meta, key, value)
    text = json.dumps(meta)
    for raw in set(re.findall(r'"RAW:([^"]*)"', text)):
        text = text.replace(f'"RAW:{raw}"', raw)
    (model / MODEL_JSON).write_text(text)
    with pytest.raises(ModelError) as err:
        ModelFolder.open(model)
    assert problem in one_line(err.value) and str(model / MODEL_JSON) in str(err.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"format": NaN}', "NaN is not a JSON number"),
        ('{"format": Infinity}', "Infinity is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"a": 1} {"b": 2}', "Extra data"),
    ],
)
def test_model_json_that_is_not_strict_json_is_refused(model, text, problem):
    (model / MODEL_JSON).write_text(text)
    with pytest.raises(ModelError, match=problem):
        ModelFolder.open(model)
    (model / MODEL_JSON).write_bytes(b"\xff\xfe{}")
    with pytest.raises(ModelError, match="is not UTF-8 text"):
        ModelFolder.open(model)


def test_the_predict_command_says_it_in_one_line_before_loading_anything(model, tmp_path, capsys):
    meta = json.loads((model / MODEL_JSON).read_text())
    meta["inference"]["sw_batch_size"] = 1.5
    (model / MODEL_JSON).write_text(json.dumps(meta))
    argv = ["predict", "-i", str(tmp_path), "-o", str(tmp_path / "o"), "--model-dir", str(model)]
    (tmp_path / "case_0000.nii.gz").write_bytes(b"")
    (tmp_path / "case_0001.nii.gz").write_bytes(b"")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sw_batch_size: expected int, got 1.5" in err[0]


# --- model folders as one transaction ----------------------------------------------------------


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def tiny_states(seed: int, folds=(0, 1)) -> dict[int, dict]:
    states = {}
    for fold in folds:
        torch.manual_seed(seed + fold)
        states[fold] = build_network(TINY_NETWORK).state_dict()
    return states


def test_import_into_an_existing_model_that_fails_on_a_later_fold_leaves_it_byte_identical(tmp_path):
    out = tmp_path / "model"
    write_model_folder(out, state_dicts=tiny_states(0), network=TINY_NETWORK, settings=Settings())
    before = folder_bytes(out)
    good, bad = tiny_states(5)[0], build_network({**TINY_NETWORK, "channels": [4, 16]}).state_dict()
    for name, state in (("fold0.pt", good), ("fold1.pt", bad)):
        torch.save(state, tmp_path / name)
    with pytest.raises(ModelError, match=r"fold1.pt: does not fit the network \(in_channels 2, channels \[4, 8\]"):
        import_weights([tmp_path / "fold0.pt", tmp_path / "fold1.pt"], out, network=TINY_NETWORK)
    assert folder_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.pt", "fold1.pt", "model"]  # no temporary folder
    assert len(ModelFolder.open(out).load_networks()) == 2  # checksums still verify


def test_a_failed_import_into_a_new_folder_leaves_no_folder(tmp_path):
    torch.save({0: torch.zeros(1)}, tmp_path / "fold0.pt")  # int keys: not a state dict
    with pytest.raises(ModelError, match="key 0 is not a parameter name"):
        import_weights([tmp_path / "fold0.pt"], tmp_path / "new", network=TINY_NETWORK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.pt"]


def test_a_successful_import_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "model"
    write_model_folder(out, state_dicts=tiny_states(0, folds=(0, 1, 2)), network=TINY_NETWORK, settings=Settings())
    for fold, state in tiny_states(7).items():
        torch.save(state, tmp_path / f"fold{fold}.pt")
    folder = import_weights([tmp_path / "fold0.pt", tmp_path / "fold1.pt"], out, network=TINY_NETWORK)
    assert [f.fold for f in folder.folds] == [0, 1] and not (out / "fold2.pt").exists()  # no orphan of the old one


def test_a_model_folder_is_not_written_over_a_folder_of_other_things(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(PetsegError, match="exists and is not a petseg model folder"):
        write_model_folder(tmp_path / "mine", state_dicts=tiny_states(0), network=TINY_NETWORK)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# --- training documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, problem",
    [
        (b"not a checkpoint", "cannot be loaded as a training state"),
        ([1, 2], "is not a training state (a list)"),
        ({"model": {}, "epoch": 0}, "not a training state: object missing required field"),
        (
            {"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": -1, "best": 0.0, "config": {}},
            "epoch",
        ),
    ],
)
def test_a_bad_last_pt_is_one_line_naming_the_file(tmp_path, state, problem):
    path = tmp_path / "last.pt"
    path.write_bytes(state) if isinstance(state, bytes) else torch.save(state, path)
    with pytest.raises(ModelError) as err:
        read_training_state(path, device=torch.device("cpu"))
    assert problem in one_line(err.value) and str(path) in str(err.value)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_crafted_last_pt_runs_no_code_and_gives_no_unsafe_advice(tmp_path, capsys):
    path = tmp_path / "last.pt"
    torch.save({"model": Payload()}, path, pickle_module=pickle)
    with pytest.raises(ModelError) as err:
        read_training_state(path, device=torch.device("cpu"))
    assert "weights_only" not in one_line(err.value) and "this must never run" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "splits, problem",
    [
        ([{"train": [], "val": ["a"]}], "[0].train: expected array of length >= 1"),
        ([{"train": [["a"]], "val": ["b"]}], "[0].train[0]: expected str"),
        ([{"train": ["a", "b"], "val": ["a"]}], "fold 0 lists case 'a' in both train and val"),
        ([{"train": ["a", "a"], "val": ["b"]}], "fold 0 lists case 'a' twice"),
        ({"train": ["a"], "val": ["b"]}, "expected array"),
    ],
)
def test_a_bad_splits_file_is_one_line(tmp_path, splits, problem):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(InputError) as err:
        load_splits(path, ["a", "b"])
    assert problem in one_line(err.value)


@pytest.mark.parametrize(
    "meta, problem",
    [
        ({"preprocessing": {}, "inference": {}}, "object missing required field network"),
        ({"network": [1], "preprocessing": {}, "inference": {}}, "network: expected object"),
    ],
)
def test_assemble_with_a_bad_train_json_is_one_line(tmp_path, capsys, meta, problem):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train.json").write_text(json.dumps(meta))
    assert main(["assemble", str(tmp_path / "run"), "-o", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0] and not (tmp_path / "m").exists()


# --- small documents of the CLI ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content, problem",
    [
        ("case,group\ncafé,fdg\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9"),
        (b"case,group\nc1\n", "line 2: column 'group' is empty"),
        (b"case,group\nc1,all\n", "group name 'all' is reserved"),
        (b"case,group\nc1,fdg\nc1,psma\n", "case 'c1' is in two groups"),
        (b"case;group\nc1;fdg\n", "needs the columns case,group"),
    ],
)
def test_a_bad_groups_table_is_one_line(tmp_path, content, problem):
    (tmp_path / "groups.csv").write_bytes(content)
    with pytest.raises(InputError) as err:
        read_groups(tmp_path / "groups.csv")
    assert problem in one_line(err.value)


def test_a_groups_table_with_a_bom_reads(tmp_path):
    (tmp_path / "groups.csv").write_bytes("\ufeffcase,group\r\nc1,fdg\r\n\r\n".encode())
    assert read_groups(tmp_path / "groups.csv") == {"c1": "fdg"}


def test_compare_reports_a_binary_json_as_a_mismatch(tmp_path, capsys):
    for side, content in (("a", b'{"x": 1}'), ("b", b"\xff\xd8binary")):
        (tmp_path / side).mkdir()
        (tmp_path / side / "result.json").write_bytes(content)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "MISMATCH" in err and "is not UTF-8 text" in err and "Traceback" not in err


@pytest.mark.parametrize("window", [("10", "0"), ("nan", "nan"), ("0", "inf"), ("5", "5")])
def test_qc_refuses_an_suv_window_that_shows_nothing(tmp_path, capsys, window):
    argv = [
        "qc",
        "--pet",
        str(tmp_path / "p.nii.gz"),
        "--mask",
        str(tmp_path / "m.nii.gz"),
        "-o",
        str(tmp_path / "q.png"),
    ]
    import SimpleITK as sitk

    from conftest import blob_study

    _, pet = blob_study()
    sitk.WriteImage(pet, str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(sitk.Cast(pet > 3, sitk.sitkUInt8), str(tmp_path / "m.nii.gz"))
    assert main([*argv, "--suv-window", *window]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "suv_window: must be LOW HIGH with HIGH > LOW" in err[0]


# --- clicks ------------------------------------------------------------------------------------


def test_a_huge_integer_in_a_clicks_file_is_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"points": [{"point": [1, 2, ' + "9" * 5000 + '], "name": "tumor"}]}')
    with pytest.raises(InputError) as err:
        read_clicks(path, grid=PET)
    assert "points[0].point[2]: expected a finite number, got a number too large" in one_line(err.value)


def test_a_clicks_file_above_the_size_cap_is_refused_unread(tmp_path):
    path = tmp_path / "c.json"
    with open(path, "wb") as fh:
        fh.truncate(11 * 1024 * 1024)
    with pytest.raises(InputError, match="more than the 10,485,760 a clicks file may have"):
        read_clicks(path, grid=PET)


def test_many_skipped_points_give_one_warning_each_kind_of_skip(tmp_path, caplog):
    points = [{"point": [1, 1, 1], "name": "tumor"}] * 3000 + [{"point": [500, 1, 1], "name": "background"}] * 3000
    with caplog.at_level("WARNING"):
        clicks = parse_clicks({"points": points}, grid=PET, source="c.json")
    assert len(clicks.tumor) == 10 and clicks.background == ()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "3000 point(s) lie outside the PET" in messages[0] and "2990 point(s) beyond the first 10" in messages[1]


# --- the run manifest --------------------------------------------------------------------------


def manifest(folder: Path) -> Manifest:
    folder.mkdir(exist_ok=True)
    return Manifest(folder, model={}, settings=Settings(), shard=Shard(), device="cpu")


def test_malformed_manifest_lines_are_skipped_with_one_warning_naming_them(tmp_path, caplog):
    m = manifest(tmp_path / "out")
    m.append({"case": "a", "status": "done", "outputs": ["a.nii.gz"]})
    with open(m.case_log, "ab") as fh:
        fh.write(b'{"case": ["x"], "status": "done"}\n\xff\xfe\n{"case": "b", "status": "done", "outputs": 5}\n')
        fh.write(b'{"case": "c", "outputs": ["../../etc/passwd"], "status": "done"}\n{"case": "zz", "stat')
    m.append({"case": "d", "status": "failed"})
    with caplog.at_level("WARNING"):
        entries = list(m.entries())
    assert [e.case for e in entries] == ["a", "d"]  # the cut line did not swallow the next record
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "5 malformed line(s) skipped: line 2" in warning and "line 3" in warning
    with caplog.at_level("WARNING"):
        m.completed(), m.recorded_outputs()  # a run reads the log more than once: one warning a run
    assert len(caplog.records) == 1


def test_a_manifest_that_is_a_symlink_is_never_written_through(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / CASE_LOG).symlink_to(precious)
    with pytest.raises(PetsegError, match="cannot be appended to .*symbolic link is refused"):
        manifest(tmp_path / "out").start()
    assert precious.read_text() == "mine\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [CASE_LOG]  # nothing written before the refusal


# --- property-based: mutations never give a traceback ------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def mutate(document, path: list, value):
    """``document`` with the node at ``path`` (indices into its containers) replaced by ``value``."""
    if not path or not isinstance(document, dict | list) or not document:
        return value
    key = list(document)[path[0] % len(document)] if isinstance(document, dict) else path[0] % len(document)
    out = dict(document) if isinstance(document, dict) else list(document)
    out[key] = mutate(document[key], path[1:], value)
    return out


PATHS = st.lists(st.integers(min_value=0, max_value=50), max_size=5)
VALID_CLICKS = {"points": [{"point": [3, 4, 5], "name": "tumor"}, {"point": [1.5, 2, 3], "name": "background"}]}


@FUZZ
@given(path=PATHS, value=JSON)
def test_mutated_clicks_give_clicks_or_one_line(path, value):
    try:
        parse_clicks(mutate(VALID_CLICKS, path, value), grid=PET, source="c.json")
    except InputError as err:
        one_line(err)


@FUZZ
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_parse_as_json_or_give_one_line(data):
    try:
        parse_json_text(data, source="x.json")
    except InputError as err:
        one_line(err)


@FUZZ
@given(lines=st.lists(st.binary(max_size=80) | JSON.map(lambda v: json.dumps(v).encode()), max_size=6))
def test_any_manifest_lines_are_skipped_or_read(tmp_path_factory, lines):
    m = manifest(tmp_path_factory.mktemp("manifest"))
    m.case_log.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    assert all(entry.case for entry in m.entries())


@FUZZ
@given(path=PATHS, value=JSON)
def test_mutated_model_json_gives_a_model_or_one_line(tiny_model_dir, tmp_path_factory, path, value):
    folder = tmp_path_factory.mktemp("model")
    for name in ("fold0.pt", "fold1.pt"):
        shutil.copy(tiny_model_dir / name, folder / name)
    meta = json.loads((tiny_model_dir / MODEL_JSON).read_text())
    (folder / MODEL_JSON).write_text(json.dumps(mutate(meta, path, value)))
    try:
        ModelFolder.open(folder)
    except ModelError as err:
        one_line(err)


CELLS = st.text(alphabet=string.printable + "é€\ufeff", max_size=40)


@FUZZ
@given(text=CELLS, encoding=st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
def test_any_groups_table_gives_groups_or_one_line(tmp_path_factory, text, encoding):
    path = tmp_path_factory.mktemp("groups") / "groups.csv"
    try:
        path.write_bytes(("case,group\n" + text).encode(encoding))
    except UnicodeEncodeError:
        return
    try:
        groups = read_groups(path)
    except InputError as err:
        one_line(err)
    else:
        assert all(isinstance(k, str) and k and v for k, v in groups.items())


# --- third hostile round: model folders and documents a user really has ---------------------------


def test_a_signal_during_the_swap_still_leaves_one_whole_model(tmp_path, monkeypatch):
    import os
    import signal

    import petseg.io
    from petseg.frontend import run_guarded

    out = tmp_path / "model"
    write_model_folder(out, state_dicts=tiny_states(0), network=TINY_NETWORK, settings=Settings())
    real = os.rename

    def rename_then_stop(src, dst):
        real(src, dst)
        if str(dst).endswith(".old"):  # the old folder just moved aside
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(petseg.io.os, "rename", rename_then_stop)
    new = tiny_states(9)

    def job():
        write_model_folder(out, state_dicts=new, network=TINY_NETWORK, settings=Settings())
        return 0

    assert run_guarded("petseg", job) == 143
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing aside, nothing half-made
    networks = ModelFolder.open(out).load_networks()
    torch.testing.assert_close(networks[0].state_dict(), new[0])  # the stop waited for the swap


def test_a_model_folder_a_killed_swap_left_aside_is_named_and_restored(tmp_path):
    out = tmp_path / "model"
    write_model_folder(out, state_dicts=tiny_states(0), network=TINY_NETWORK, settings=Settings())
    aside = tmp_path / ".model.999999.abcd1234.partial.old"  # a writer that no longer runs
    out.rename(aside)
    with pytest.raises(ModelError, match="left the earlier folder at .*partial.old: rename it back"):
        ModelFolder.open(out)
    from petseg.atomic import remove_stale_partials

    remove_stale_partials(out)  # what the next write there does first
    assert ModelFolder.open(out).folds and not aside.exists()


def test_writing_a_model_keeps_the_users_files_and_follows_a_link(tmp_path):
    real = tmp_path / "store" / "model"
    write_model_folder(real, state_dicts=tiny_states(0, folds=(0, 1, 2)), network=TINY_NETWORK, settings=Settings())
    (real / "README.md").write_text("how we trained it")
    (tmp_path / "link").symlink_to(real)
    write_model_folder(tmp_path / "link", state_dicts=tiny_states(3), network=TINY_NETWORK, settings=Settings())
    assert (tmp_path / "link").is_symlink() and (real / "README.md").read_text() == "how we trained it"
    assert sorted(p.name for p in real.iterdir()) == ["README.md", "fold0.pt", "fold1.pt", "model.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "store"]  # no .partial left


def test_a_model_can_be_written_into_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    folder = write_model_folder(".", state_dicts=tiny_states(0), network=TINY_NETWORK, settings=Settings())
    assert folder.path == tmp_path / "here" and len(ModelFolder.open(tmp_path / "here").folds) == 2


def test_model_folders_as_users_have_them_open(tiny_model_dir, tmp_path):
    """Checkpoints linked from a cache (Hugging Face's layout), an upper-case checksum, a
    "metadata" key of the user's own, per-axis strides."""
    folder = tmp_path / "snapshot"
    (tmp_path / "blobs").mkdir()
    folder.mkdir()
    meta = json.loads((tiny_model_dir / MODEL_JSON).read_text())
    for entry in meta["folds"]:
        shutil.copy(tiny_model_dir / entry["file"], tmp_path / "blobs" / entry["sha256"])
        (folder / entry["file"]).symlink_to(tmp_path / "blobs" / entry["sha256"])
        entry["sha256"] = entry["sha256"].upper()
    meta["metadata"] = {"licence": "CC BY 4.0"}
    (folder / MODEL_JSON).write_text(json.dumps(meta))
    assert len(ModelFolder.open(folder).load_networks()) == 2
    strides = {**TINY_NETWORK, "channels": [4, 8], "strides": [[2, 2, 1]]}
    state = build_network(strides).state_dict()
    model = write_model_folder(
        tmp_path / "aniso", state_dicts={0: state}, network=strides, settings=Settings(roi_size=(32, 32, 31))
    )
    assert model.network["strides"] == [[2, 2, 1]]


def test_import_like_another_model_folder_takes_its_network_and_settings(click_model_dir, tmp_path, capsys):
    files = []
    for fold in (0, 1):
        files.append(tmp_path / f"fold{fold}_model.pth")
        shutil.copy(click_model_dir / f"fold{fold}.pt", files[-1])
    argv = ["import-weights", *map(str, files), "-o", str(tmp_path / "m")]
    assert main(argv) == 1  # a click-aware checkpoint does not fit the paper's CT/PET network
    assert "does not fit the network (in_channels 2" in capsys.readouterr().err
    assert main([*argv, "--like", str(click_model_dir), "--target-spacing", "3", "3", "3"]) == 0
    imported = ModelFolder.open(tmp_path / "m")
    assert imported.network["in_channels"] == 4 and imported.settings.click_sigma_mm == 10.0
    assert imported.settings.target_spacing == (3.0, 3.0, 3.0)


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"case,group,group\nc1,fdg,psma\n", "the header names column 'group' twice"),
        (b'case,group\nc1,"fdg\n', "is not a CSV table (line"),
        (b"case,group\nc1,fd\x01g\n", "line 2: column 'group' holds a control character"),
    ],
)
def test_more_bad_groups_tables_are_one_line(tmp_path, content, problem):
    (tmp_path / "groups.csv").write_bytes(content)
    with pytest.raises(InputError) as err:
        read_groups(tmp_path / "groups.csv")
    assert problem in one_line(err.value)


def test_splits_with_more_keys_and_models_without_residual_units_are_read(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps([{"train": ["a"], "val": ["b"], "test": []}]))
    assert load_splits(path, ["a", "b"]) == [{"train": ["a"], "val": ["b"]}]
    from petseg.cli import build_parser

    args = build_parser().parse_args(["train", "-d", ".", "-o", "r", "--num-res-units", "0"])
    assert args.num_res_units == 0


def test_qc_refuses_a_file_name_that_is_not_png_and_compare_an_empty_expectation(tmp_path, capsys):
    from petseg.compare import compare_outputs

    (tmp_path / "expected").mkdir()
    (tmp_path / "actual").mkdir()
    assert not compare_outputs(tmp_path / "expected", tmp_path / "actual").ok
    import SimpleITK as sitk

    from conftest import blob_study

    _, pet = blob_study()
    sitk.WriteImage(pet, str(tmp_path / "p.nii.gz"))
    sitk.WriteImage(sitk.Cast(pet > 3, sitk.sitkUInt8), str(tmp_path / "m.nii.gz"))
    qc = ["qc", "--pet", str(tmp_path / "p.nii.gz"), "--mask", str(tmp_path / "m.nii.gz"), "-o"]
    assert main([*qc, str(tmp_path / "q.jpg")]) == 1
    assert "give a file name ending in .png" in capsys.readouterr().err and not (tmp_path / "q.jpg").exists()
