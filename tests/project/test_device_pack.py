"""benchmarks/device_pack.py: a device run's files handed back within the device tool's limits."""

import tarfile

import pytest

from benchmarks.device_pack import MAX_FILES, PIECE, pack


def write(path, size):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))
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


def test_small_files_go_into_one_archive_and_large_ones_in_pieces_that_join_to_the_file(tmp_path, tree):
    out = tmp_path / "out"
    out.mkdir()
    done = pack(out, tree, ["**/results.json", "logs/*", "study/*_qat*/artifact.safetensors"],
                ["teacher/model.safetensors", "study/*_kd/artifact.safetensors"])
    with tarfile.open(out / "small.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["logs/a.log", "study/a_qat2/artifact.safetensors", "teacher/results.json"]
    pieces = sorted(out.glob("teacher__model.safetensors.part-*"))
    assert [p.stat().st_size for p in pieces] == [PIECE, PIECE, 7]
    assert b"".join(p.read_bytes() for p in pieces) == (tree / "teacher" / "model.safetensors").read_bytes()
    assert (out / "study__a_kd__artifact.safetensors.part-00").read_bytes() == (
        tree / "study" / "a_kd" / "artifact.safetensors").read_bytes()
    assert done["left"] == [] and done["files"] == len(list(out.iterdir())) == 6


def test_what_was_handed_back_is_not_sent_again_unless_it_changed(tmp_path, tree):
    first, second, third = (tmp_path / n for n in ("1", "2", "3"))
    for d in (first, second, third):
        d.mkdir()
    pack(first, tree, ["**/results.json"], ["study/*_kd/artifact.safetensors"])
    assert pack(second, tree, ["**/results.json"], ["study/*_kd/artifact.safetensors"])["sent"] == []
    assert list(second.iterdir()) == []
    write(tree / "study" / "b_kd" / "artifact.safetensors", 9)  # rewritten by a later epoch
    assert pack(third, tree, ["**/results.json"], ["study/*_kd/artifact.safetensors"])["sent"] == [
        "study/b_kd/artifact.safetensors"]


def test_a_large_file_that_does_not_fit_is_left_whole_for_the_next_call(tmp_path, tree):
    for i in range(MAX_FILES):
        write(tree / "big" / f"f{i}.bin", PIECE)
    out = tmp_path / "out"
    out.mkdir()
    done = pack(out, tree, [], ["teacher/model.safetensors", "big/*.bin"])
    assert done["sent"] == ["teacher/model.safetensors", "big/f0.bin", "big/f1.bin"]  # 60 MiB; a third: over 63
    assert done["left"] == [f"big/f{i}.bin" for i in range(2, MAX_FILES)]
    assert len(list(out.iterdir())) == done["files"] == 5
    later = tmp_path / "later"
    later.mkdir()
    assert pack(later, tree, [], ["teacher/model.safetensors", "big/*.bin"])["sent"] == [
        f"big/f{i}.bin" for i in range(2, 6)]  # eight files of one piece: four fit the bytes
