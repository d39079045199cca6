import gzip
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from histodrl.data import pcam as pcam_module
from histodrl.data.pcam import PCamDataset, PCamPatches, pcam_path
from histodrl.errors import UserInputError

N = 64


def write_pcam(root, split="train", n=N, seed=0, x=None, y=None, x_key="x", y_key="y"):
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
    if y is None:
        y = rng.integers(0, 2, (n, 1, 1, 1), dtype=np.uint8)
    with h5py.File(pcam_path(root, split, "x"), "w") as f:
        f.create_dataset(x_key, data=x)
    with h5py.File(pcam_path(root, split, "y"), "w") as f:
        f.create_dataset(y_key, data=y)
    return x, y


def reference_items(x, y, indices):
    """Explicit per-index reads: HWC -> CHW by transposing each patch."""
    return [(torch.from_numpy(x[i].transpose(2, 0, 1).copy()), int(y[i, 0, 0, 0])) for i in indices]


def assert_same_items(got, expected):
    assert len(got) == len(expected)
    for (patch, label), (ref_patch, ref_label) in zip(got, expected):
        assert patch.dtype == torch.uint8 and patch.shape == (3, 96, 96)
        assert torch.equal(patch, ref_patch) and label == ref_label


def test_items_are_chw_patches_with_int_labels(tmp_path):
    x, y = write_pcam(tmp_path)
    data = PCamDataset(tmp_path, "train")
    assert len(data) == N and data.description.endswith("train (64 patches 96x96)")
    assert_same_items([data[5], data[-1]], reference_items(x, y, [5, N - 1]))
    assert isinstance(data[5][1], int)
    assert np.array_equal(data.labels, y.reshape(-1))


@pytest.mark.parametrize(
    "indices",
    [[60, 3, 3, 10, 0], [5, 4, 6, 4, 7], [9], []],
    ids=["spread-out, repeated", "close together, repeated", "single", "empty"],
)
def test_batched_reads_match_per_index_reads_in_any_order(tmp_path, indices):
    x, y = write_pcam(tmp_path)
    data = PCamDataset(tmp_path, "train")
    assert_same_items(data.__getitems__(indices), reference_items(x, y, indices))


def test_out_of_range_index_is_an_index_error(tmp_path):
    write_pcam(tmp_path)
    with pytest.raises(IndexError):
        PCamDataset(tmp_path, "train").__getitems__([0, N])


def test_no_file_is_held_open_until_a_read_and_each_process_opens_its_own(tmp_path, monkeypatch):
    write_pcam(tmp_path)
    data = PCamDataset(tmp_path, "train")
    assert data._file is None
    data[0]
    first = data._file
    data[1]
    assert data._file is first
    pickle.loads(pickle.dumps(data))  # spawned workers receive a picklable copy
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked worker
    data[2]
    assert data._file is not first


def test_dataloader_workers_read_the_same_batches(tmp_path):
    x, y = write_pcam(tmp_path)
    data = PCamDataset(tmp_path, "train")
    data[0]  # a handle opened before the workers fork must not be used by them
    order = list(np.random.default_rng(0).permutation(N)[:40])
    batches = [order[k : k + 8] for k in range(0, 40, 8)]
    for workers in (0, 2):
        loader = DataLoader(data, batch_sampler=batches, num_workers=workers)
        patches = torch.cat([b[0] for b in loader])
        labels = torch.cat([b[1] for b in loader])
        ref = reference_items(x, y, order)
        assert torch.equal(patches, torch.stack([p for p, _ in ref]))
        assert labels.tolist() == [lab for _, lab in ref]


def test_cache_ram_serves_patches_from_memory(tmp_path):
    x, y = write_pcam(tmp_path)
    data = PCamDataset(tmp_path, "train", cache_ram=True)
    os.remove(pcam_path(tmp_path, "train", "x"))
    assert_same_items(data.__getitems__([3, 1, 3]), reference_items(x, y, [3, 1, 3]))


def test_without_labels_items_are_patches_and_no_y_file_is_needed(tmp_path):
    x, _ = write_pcam(tmp_path, "valid")
    os.remove(pcam_path(tmp_path, "valid", "y"))
    data = PCamDataset(tmp_path, "valid", with_labels=False)
    assert data.labels is None
    assert torch.equal(data[2], torch.from_numpy(x[2].transpose(2, 0, 1).copy()))


def test_meta_csv_is_read_into_typed_columns(tmp_path):
    write_pcam(tmp_path, "test", n=3)
    pcam_path(tmp_path, "test", "meta").write_text(
        ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
        "0,1,2,False,False,camelyon16_test_001\n"
        "1,3,4,True,False,camelyon16_test_001\n"
        "2,5,6,True,True,camelyon16_test_002\n"
    )
    meta = PCamDataset(tmp_path, "test").meta
    assert meta["index"] == [0, 1, 2] and meta["coord_x"] == [2, 4, 6]
    assert meta["tumor_patch"] == [False, True, True]
    assert meta["wsi"][2] == "camelyon16_test_002"


def test_meta_csv_of_another_length_is_an_error(tmp_path):
    write_pcam(tmp_path, "test", n=3)
    pcam_path(tmp_path, "test", "meta").write_text(",coord_y\n0,1\n")
    with pytest.raises(UserInputError, match=r"test_meta.csv: 1 rows, expected 3"):
        PCamDataset(tmp_path, "test")


def test_gzipped_files_ask_to_be_gunzipped(tmp_path):
    write_pcam(tmp_path)
    path = pcam_path(tmp_path, "train", "x")
    with open(path, "rb") as src, gzip.open(f"{path}.gz", "wb") as dst:
        dst.write(src.read())
    path.unlink()
    with pytest.raises(
        UserInputError, match=r"train_x.h5: not found, but .*h5.gz is there.*gunzip"
    ):
        PCamDataset(tmp_path, "train")


def test_missing_file_names_it(tmp_path):
    write_pcam(tmp_path)
    os.remove(pcam_path(tmp_path, "train", "y"))
    with pytest.raises(UserInputError, match=r"train_y.h5: file not found"):
        PCamDataset(tmp_path, "train")


def test_not_an_hdf5_file_names_it(tmp_path):
    write_pcam(tmp_path)
    pcam_path(tmp_path, "train", "x").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match=r"train_x.h5: not a readable HDF5 file"):
        PCamDataset(tmp_path, "train")


def test_wrong_key_names_the_file_and_the_keys_found(tmp_path):
    write_pcam(tmp_path, x_key="images")
    with pytest.raises(UserInputError, match=r"train_x.h5: no dataset 'x' \(found keys: images\)"):
        PCamDataset(tmp_path, "train")


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((4, 64, 64, 3), np.uint8),
        np.zeros((4, 3, 96, 96), np.uint8),
        np.zeros((4, 96, 96, 3)),
    ],
    ids=["small patches", "CHW", "float"],
)
def test_wrong_x_shape_or_dtype_names_the_file_and_the_expected_layout(tmp_path, x):
    write_pcam(tmp_path, n=4, x=x)
    with pytest.raises(
        UserInputError, match=r"train_x.h5: dataset 'x' is .*expected uint8 \(N, 96, 96, 3\)"
    ):
        PCamDataset(tmp_path, "train")


def test_wrong_y_shape_names_the_file(tmp_path):
    write_pcam(tmp_path, n=4, y=np.zeros((4, 2), np.uint8))
    with pytest.raises(UserInputError, match=r"train_y.h5: dataset 'y' is .*\(4, 2\)"):
        PCamDataset(tmp_path, "train")


def test_x_and_y_of_different_lengths_is_an_error(tmp_path):
    write_pcam(tmp_path, n=4, y=np.zeros((5, 1, 1, 1), np.uint8))
    with pytest.raises(UserInputError, match=r"train_y.h5: 5 labels, expected 4"):
        PCamDataset(tmp_path, "train")


def test_unknown_split_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="'val'"):
        PCamDataset(tmp_path, "val")


def test_pretraining_patches_are_centre_or_seeded_random_crops(tmp_path):
    x, _ = write_pcam(tmp_path)
    centre = PCamPatches(tmp_path, crop=64)
    assert len(centre) == N
    assert np.array_equal(centre[3].numpy(), x[3, 16:80, 16:80].transpose(2, 0, 1))
    whole = PCamPatches(tmp_path, crop=96)
    assert np.array_equal(whole[3].numpy(), x[3].transpose(2, 0, 1))
    rand = PCamPatches(tmp_path, crop=32, crop_mode="random", seed=5)
    items = rand.__getitems__([3, N + 3])  # item 3 of epochs 0 and 1
    for epoch, item in enumerate(items):
        rng = np.random.default_rng([5, epoch, 3])
        top, left = rng.integers(0, 65), rng.integers(0, 65)
        assert np.array_equal(
            item.numpy(), x[3, top : top + 32, left : left + 32].transpose(2, 0, 1)
        )
    assert not torch.equal(items[0], items[1])
    with pytest.raises(ValueError, match="crop=97"):
        PCamPatches(tmp_path, crop=97)


def test_contiguous_and_point_reads_agree_at_the_switch_point(tmp_path, monkeypatch):
    x, y = write_pcam(tmp_path)
    indices = [0, 9, 9, 20]
    data = PCamDataset(tmp_path, "train")
    for factor in (1, 100):
        monkeypatch.setattr(pcam_module, "_CONTIGUOUS_READ_FACTOR", factor)
        assert_same_items(data.__getitems__(indices), reference_items(x, y, indices))
