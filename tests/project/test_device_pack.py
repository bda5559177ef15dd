"""benchmarks/device_pack.py: a device run's files handed back within the device tool's limits, over as many
calls as they need, and joined here."""

import io
import json
import os
import tarfile

import pytest

from benchmarks.device_pack import MAX_BYTES, MAX_FILES, PIECE, join, pack


def write(path, size, fill=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes((i + fill) % 256 for i in range(256)) * (size // 256) + bytes(size % 256))
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "runs"
    write(root / "teacher" / "results.json", 100)
    write(root / "study" / "a_qat2" / "artifact.safetensors", 3000)
    write(root / "logs" / "a.log", 50)
    write(root / "teacher" / "model.safetensors", 2 * PIECE + 7)  # three pieces
    write(root / "study" / "a_kd" / "artifact.safetensors", PIECE)  # one
    write(root / "study" / "b_kd" / "artifact.safetensors", 5)
    return root


def calls(tmp_path, root, small, large, n):
    """``n`` successive pack calls on ``root``, each into a fresh folder; their folders and answers."""
    folders, answers = [], []
    for i in range(n):
        out = tmp_path / f"call{len(list(tmp_path.glob('call*')))}"
        out.mkdir()
        answers.append(pack(out, root, small, large))
        folders.append(out)
    return folders, answers


def within_limits(folder):
    sizes = [p.stat().st_size for p in folder.iterdir()]
    return len(sizes) <= MAX_FILES and sum(sizes) <= MAX_BYTES and max(sizes, default=0) <= 16 * 2**20


def test_small_files_go_into_one_archive_and_large_ones_in_pieces_that_join_to_the_files(tmp_path, tree):
    (out,), (done,) = calls(tmp_path, tree, ["**/results.json", "logs/*", "study/*_qat*/artifact.safetensors"],
                            ["teacher/model.safetensors", "study/*_kd/artifact.safetensors"], 1)
    with tarfile.open(out / "small.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["logs/a.log", "study/a_qat2/artifact.safetensors", "teacher/results.json"]
    assert [p.stat().st_size for p in sorted(out.glob("teacher__model.safetensors.*.part-*"))] == [PIECE, PIECE, 7]
    assert done["left"] == done["partial"] == [] and done["files"] == len(list(out.iterdir())) == 7  # + pieces.json
    assert within_limits(out)
    dest = tmp_path / "here"
    joined = join(dest, [out])
    assert sorted(joined["joined"]) == ["study/a_kd/artifact.safetensors", "study/b_kd/artifact.safetensors",
                                        "teacher/model.safetensors"]
    for rel in joined["joined"] + joined["extracted"]:
        assert (dest / rel).read_bytes() == (tree / rel).read_bytes()


def test_what_was_handed_back_is_not_sent_again_unless_it_changed(tmp_path, tree):
    small, large = ["**/results.json"], ["study/*_kd/artifact.safetensors"]
    (_, second), (_, again) = calls(tmp_path, tree, small, large, 2)
    assert again["sent"] == [] and list(second.iterdir()) == []
    write(tree / "study" / "b_kd" / "artifact.safetensors", 9)  # rewritten by a later epoch
    write(tree / "teacher" / "results.json", 120)
    (third,), (done,) = calls(tmp_path, tree, small, large, 1)
    assert done["sent"] == ["teacher/results.json", "study/b_kd/artifact.safetensors"]


def test_a_file_larger_than_a_call_goes_over_calls_and_joins_only_when_complete(tmp_path, tree):
    state = write(tree / "teacher" / "train_state.safetensors", 7 * PIECE + 3)  # 8 pieces: over 63 MiB
    large = ["teacher/train_state.safetensors", "study/*_kd/artifact.safetensors"]
    folders, answers = calls(tmp_path, tree, ["logs/*"], large, 3)
    assert all(within_limits(f) for f in folders)
    assert answers[0]["partial"] == ["teacher/train_state.safetensors"]
    assert answers[0]["left"] == ["study/a_kd/artifact.safetensors"]  # 15 MiB more: over 63
    assert answers[0]["sent"] == ["logs/a.log", "study/b_kd/artifact.safetensors"]  # 5 bytes still fit
    assert "teacher/train_state.safetensors" in answers[1]["sent"]
    dest = tmp_path / "here"
    first = join(dest, folders[:1])
    assert first["joined"] == ["study/b_kd/artifact.safetensors"] and first["waiting"] == {"teacher/train_state.safetensors": "4 of 8 pieces"}
    assert not (dest / "teacher" / "train_state.safetensors").exists()
    assert "teacher/train_state.safetensors" in join(dest, folders)["joined"]
    assert (dest / "teacher" / "train_state.safetensors").read_bytes() == state.read_bytes()
    assert join(dest, folders)["joined"] == []  # already here


def test_a_file_rewritten_between_calls_starts_again_and_pieces_of_two_versions_never_mix(tmp_path, tree):
    path = write(tree / "teacher" / "train_state.safetensors", 7 * PIECE + 3)
    (first,), _ = calls(tmp_path, tree, [], ["teacher/train_state.safetensors"], 1)
    write(path, 7 * PIECE + 3, fill=1)  # the training went on: same size, other bytes
    os.utime(path, (1, 1))
    folders, answers = calls(tmp_path, tree, [], ["teacher/train_state.safetensors"], 2)
    assert [p["index"] for p in json.loads((folders[0] / "pieces.json").read_text())] == [0, 1, 2, 3]
    dest = tmp_path / "here"
    assert join(dest, [first, folders[0]])["joined"] == []  # 4 + 4 pieces, of two versions
    assert join(dest, [first, *folders])["joined"] == ["teacher/train_state.safetensors"]
    assert (dest / "teacher" / "train_state.safetensors").read_bytes() == path.read_bytes()


def test_a_corrupted_piece_is_refused_and_writes_nothing(tmp_path, tree):
    (out,), _ = calls(tmp_path, tree, [], ["teacher/model.safetensors"], 1)
    piece = next(out.glob("teacher__model.safetensors.*.part-01"))
    piece.write_bytes(b"x" + piece.read_bytes()[1:])
    dest = tmp_path / "here"
    with pytest.raises(SystemExit, match="teacher/model.safetensors"):
        join(dest, [out])
    assert not (dest / "teacher").exists() or list((dest / "teacher").iterdir()) == []


def test_an_archive_member_outside_the_destination_is_refused(tmp_path):
    folder = tmp_path / "call"
    folder.mkdir()
    with tarfile.open(folder / "small.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(tarfile.TarError):
        join(tmp_path / "here", [folder])
    assert not (tmp_path / "escaped.txt").exists()
