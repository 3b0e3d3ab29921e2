"""Image pieces in isolation: block masks, augmentations, the manifest dataset."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from d2v_plugin.core.errors import ManifestError
from d2v_plugin.image.dataset import ImageDataset, raise_if_unreadable, read_labels
from d2v_plugin.image.transforms import (
    EvalTransform,
    TrainTransform,
    color_jitter,
    random_resized_crop_box,
    to_rgb,
)
from d2v_plugin.core.masking import block_mask_2d

# -- block masks ----------------------------------------------------------------------------------
PAPER = dict(height=14, width=14, num_masked=120, min_block=16)  # data2vec ViT-B/16: 120 of 196


def test_block_masks_cover_the_requested_number_of_patches():
    masks = block_mask_2d(256, **PAPER, seed=0)
    counts = masks.flatten(1).sum(1)
    assert masks.shape == (256, 14, 14) and masks.dtype == torch.bool
    assert (counts <= PAPER["num_masked"]).all()
    assert (counts == PAPER["num_masked"]).float().mean() >= 0.95
    assert abs(counts.float().mean().item() / 196 - 120 / 196) < 0.01


def test_block_masks_are_made_of_few_contiguous_blocks():
    """Masked patches form a few connected regions, unlike a random mask of the same size."""
    masks = block_mask_2d(128, **PAPER, seed=1).numpy()
    blocks = np.mean([ndimage.label(m)[1] for m in masks])
    g = torch.Generator().manual_seed(1)
    scattered = (torch.rand(128, 196, generator=g).argsort(1) < 120).view(128, 14, 14).numpy()
    random_regions = np.mean([ndimage.label(m)[1] for m in scattered])
    assert blocks < 3 and random_regions > 3 * blocks


def test_one_block_is_a_rectangle():
    mask = block_mask_2d(1, 8, 8, num_masked=16, min_block=16, min_aspect=1.0, seed=3)[0]
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    assert mask.sum() == 16 and len(rows) == 4 and len(cols) == 4
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()


def test_block_masks_follow_torch_seed():
    torch.manual_seed(5)
    a = block_mask_2d(4, 8, 8, 38, min_block=4)
    torch.manual_seed(5)
    assert torch.equal(a, block_mask_2d(4, 8, 8, 38, min_block=4))
    assert not torch.equal(a, block_mask_2d(4, 8, 8, 38, min_block=4))


@pytest.mark.parametrize("kwargs", [dict(num_masked=0), dict(num_masked=65), dict(num_masked=8, min_aspect=0)])
def test_block_mask_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        block_mask_2d(1, 8, 8, **kwargs)


# -- transforms -----------------------------------------------------------------------------------
def gradient_image(w=48, h=40) -> Image.Image:
    x = np.zeros((h, w, 3), dtype=np.uint8)
    x[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # red grows to the right
    x[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]  # green grows downwards
    return Image.fromarray(x)


def test_crop_boxes_stay_inside_and_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(48, 40, (0.2, 0.9), (0.75, 4 / 3), rng)
        assert 0 <= left and left + w <= 48 and 0 <= top and top + h <= 40
        assert 0.2 * 0.9 <= w * h / (48 * 40) <= 0.9 * 1.1  # rounding to whole pixels
        assert 0.75 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_crop_falls_back_to_a_centred_box_for_impossible_ratios():
    left, top, w, h = random_resized_crop_box(100, 10, (0.9, 1.0), (1.0, 1.0), np.random.default_rng(0))
    assert (w, h) == (10, 10) and left == 45 and top == 0


def test_train_transform_output_and_normalisation():
    grey = Image.new("RGB", (40, 40), (128, 128, 128))
    t = TrainTransform(16, color_jitter=0.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = t(grey, np.random.default_rng(0))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25))


def test_flip_and_full_crop():
    img = gradient_image()
    whole = dict(scale=(1.0, 1.0), ratio=(48 / 40, 48 / 40), color_jitter=0.0, mean=(0, 0, 0), std=(1, 1, 1))
    kept = TrainTransform(24, hflip_prob=0.0, **whole)(img, np.random.default_rng(0))
    flipped = TrainTransform(24, hflip_prob=1.0, **whole)(img, np.random.default_rng(0))
    assert kept[0, :, -1].mean() > kept[0, :, 0].mean()  # red increases to the right...
    assert flipped[0, :, -1].mean() < flipped[0, :, 0].mean()  # ...and to the left once flipped
    torch.testing.assert_close(flipped, kept.flip(-1), atol=0.02, rtol=0)


def test_color_jitter_ranges():
    x = np.random.default_rng(1).uniform(0.2, 0.8, (8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(color_jitter(x, 0.0, np.random.default_rng(0)), x, rtol=0, atol=1e-6)
    out = np.stack([color_jitter(x, 0.4, np.random.default_rng(s)) for s in range(50)])
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[0], out[1])
    ratio = out.mean(axis=(1, 2, 3)) / x.mean()  # brightness moves the mean by at most 1 +- 0.4
    assert ratio.min() > 0.55 and ratio.max() < 1.45


def test_train_transform_is_a_function_of_the_rng():
    img, t = gradient_image(), TrainTransform(16)
    a = t(img, np.random.default_rng([1, 2, 3]))
    assert torch.equal(a, t(img, np.random.default_rng([1, 2, 3])))
    assert not torch.equal(a, t(img, np.random.default_rng([1, 3, 3])))


def test_eval_transform_resizes_short_side_and_centre_crops():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (90, 40, 110, 60))  # a white square in the centre
    out = EvalTransform(32, crop_ratio=0.5, mean=(0, 0, 0), std=(1, 1, 1))(img)
    assert out.shape == (3, 32, 32)
    # short side 100 -> 64, so the 20px square becomes ~13px, centred in the 32px crop
    assert out[:, 14:18, 14:18].min() > 0.9 and out[:, :4, :4].max() < 0.05


# -- dataset --------------------------------------------------------------------------------------
@pytest.fixture
def image_dir(tmp_path):
    root = tmp_path / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            gradient_image(20 + i, 24).save(root / label / f"{i}.png")
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "labels.txt").write_text("cat\ndog\n")
    return tmp_path


def write_manifest(path, root, rows):
    path.write_text("\n".join([str(root)] + rows) + "\n")
    return str(path)


def test_dataset_batches_images_and_targets(image_dir):
    rows = [f"{c}/{i}.png\t{c}" for c in ("cat", "dog") for i in range(3)]
    manifest = write_manifest(image_dir / "man" / "train.tsv", image_dir / "images", rows)
    ds = ImageDataset(manifest, TrainTransform(16), labels=read_labels(str(image_dir / "man")), shuffle=True)
    batch = ds.collater([ds[i] for i in range(len(ds))])
    assert batch["net_input"]["source"].shape == (6, 3, 16, 16)
    assert batch["target"].tolist() == [0, 0, 0, 1, 1, 1] and batch["ntokens"] == 6
    # an item's augmentation depends on (seed, epoch, index) only; the order changes per epoch
    assert torch.equal(ds[2]["source"], ds[2]["source"])
    order = ds.ordered_indices().tolist()
    ds.set_epoch(2)
    assert not torch.equal(ds[2]["source"], batch["net_input"]["source"][2])
    assert sorted(order) == list(range(6))


def test_undecodable_image_travels_to_the_main_process(image_dir):
    (image_dir / "images" / "cat" / "1.png").write_text("not a png")
    manifest = write_manifest(image_dir / "man" / "train.tsv", image_dir / "images", ["cat/0.png", "cat/1.png"])
    ds = ImageDataset(manifest, EvalTransform(16))
    batch = ds.collater([ds[0], ds[1]])
    with pytest.raises(ManifestError, match=r"train.tsv:3: cannot read image .*cat/1.png"):
        raise_if_unreadable(batch)
    # decoded in a data-loader worker process (what fairseq's iterator does): the error arrives as data,
    # not as the worker's traceback, and the image task raises it in the main process
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=ds.collater)
    with pytest.raises(ManifestError, match=r"train.tsv:3: cannot read image .*cat/1.png"):
        raise_if_unreadable(next(iter(loader)))


@pytest.mark.parametrize("rows, labels, message", [
    (["cat/0.png", "cat/9.png"], None, r"train.tsv:3: image file not found: .*cat/9.png"),
    (["cat/0.png\tcat\textra"], None, r"train.tsv:2: expected 'path' or 'path<TAB>class'"),
    (["cat/0.png\tbird"], ["cat", "dog"], r"train.tsv:2: class 'bird' is not in labels.txt"),
    (["cat/0.png"], ["cat", "dog"], r"train.tsv:2: no class given"),
])
def test_bad_manifest_rows_name_the_line(image_dir, rows, labels, message):
    manifest = write_manifest(image_dir / "man" / "train.tsv", image_dir / "images", rows)
    with pytest.raises(ManifestError, match=message):
        ImageDataset(manifest, EvalTransform(16), labels=labels)


def test_empty_image_file_and_missing_labels_fail_clearly(image_dir):
    (image_dir / "images" / "dog" / "0.png").write_bytes(b"")
    manifest = write_manifest(image_dir / "man" / "train.tsv", image_dir / "images", ["dog/0.png"])
    with pytest.raises(ManifestError, match=r"train.tsv:2: image file is empty"):
        ImageDataset(manifest, EvalTransform(16))
    with pytest.raises(ManifestError, match="labels.txt: labels file not found"):
        read_labels(str(image_dir / "images"))


def test_16_bit_grey_png_is_scaled_not_clipped(image_dir):
    """A 16-bit greyscale PNG (PIL mode I;16 / I) reads as its 8-bit equivalent, not as white."""
    grey16 = np.full((24, 24), 30000, dtype=np.uint16)
    grey16[:, :12] = 65535
    Image.fromarray(grey16).save(image_dir / "images" / "cat" / "deep.png")
    with Image.open(image_dir / "images" / "cat" / "deep.png") as f:
        assert f.mode in ("I;16", "I")  # what PIL makes of it, which convert("RGB") clips to 255
    manifest = write_manifest(image_dir / "man" / "train.tsv", image_dir / "images", ["cat/deep.png"])
    source = ImageDataset(manifest, EvalTransform(24, crop_ratio=1.0, mean=(0, 0, 0), std=(1, 1, 1)))[0]["source"]
    assert source.shape == (3, 24, 24)
    assert torch.allclose(source[:, :, 20], torch.tensor(round(30000 * 255 / 65535) / 255.0))
    assert torch.allclose(source[:, :, 3], torch.tensor(1.0))


def test_float_images_are_refused_with_the_reason(tmp_path):
    from manifests.image_manifest import check_image

    with pytest.raises(ValueError, match="floating-point image"):
        to_rgb(Image.fromarray(np.zeros((4, 4), dtype=np.float32)))
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "f.tiff")
    assert "floating-point image" in check_image(str(tmp_path / "f.tiff"))
