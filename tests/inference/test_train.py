"""Training: a tiny run lowers the loss; augmentation keeps image and mask aligned; the pipeline
writes weights and a manifest the loader accepts."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from bcd_node.inference import synth
from bcd_node.inference.data import load_arrays, scan_dataset
from bcd_node.inference.loader import load_model
from bcd_node.inference.model import build_vgg16_unet
from bcd_node.inference.train import SmearBatches, TrainConfig, augment_batch, compile_model, train


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_set")
    synth.write_dataset(root, 32, 8, fields_per_patient=4)
    return root


@pytest.mark.slow
def test_tiny_training_lowers_the_loss(tiny_set: Path) -> None:
    keras.utils.set_random_seed(0)
    images, labels, masks = load_arrays(scan_dataset(tiny_set), 64)
    model = compile_model(build_vgg16_unet((64, 64, 3), 4, 0.0625), 3e-3)
    x = images[:16].astype(np.float32)
    y = {"stage": labels[:16], "mask": masks[:16, ..., None].astype(np.float32)}
    before = float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    for _ in range(15):
        model.train_on_batch(x, y)
    after = float(model.evaluate(x, y, verbose=0, return_dict=True)["loss"])
    assert after < before


def test_augmentation_keeps_mask_aligned() -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((4, 32, 32, 3), np.uint8)
    masks = np.zeros((4, 32, 32), np.uint8)
    images[:, 2:10, 3:7] = 200
    masks[:, 2:10, 3:7] = 1
    aug_i, aug_m = augment_batch(images, masks, rng)
    assert aug_i.dtype == np.float32 and aug_m.shape == masks.shape
    for i, m in zip(aug_i, aug_m):
        bright = i.mean(axis=-1) > 100
        assert (bright == m.astype(bool)).mean() > 0.97
        assert m.sum() == 32


def test_batches_cover_and_shuffle() -> None:
    images = np.zeros((10, 32, 32, 3), np.uint8)
    masks = np.zeros((10, 32, 32), np.uint8)
    labels = np.arange(10) % 4
    batches = SmearBatches(images, labels, masks, 4, seed=0)
    assert len(batches) == 3
    x, y = batches[0]
    assert x.shape == (4, 32, 32, 3) and y["mask"].shape == (4, 32, 32, 1)


@pytest.mark.slow
def test_train_pipeline_writes_loadable_weights(tiny_set: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(width=0.0625, input_size=64, epochs=1, batch_size=8, val_fraction=0.25)
    manifest = train(tiny_set, tmp_path, cfg, test_dir=tiny_set)
    assert manifest["input_shape"] == [64, 64, 3]
    assert set(manifest["metrics"]) == {"validation", "test"}
    assert manifest["temperature"] > 0
    loaded = load_model(tmp_path / "manifest.json")
    assert loaded.manifest["sha256"] == manifest["sha256"]


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_weights(tiny_set: Path, tmp_path: Path) -> None:
    first = train(tiny_set, tmp_path / "a",
                  TrainConfig(width=0.0625, input_size=64, epochs=1, batch_size=8,
                              val_fraction=0.25, steps_per_epoch=2))
    start = tmp_path / "a" / first["weights_file"]
    # A learning rate of 0 keeps every trained kernel where it started: the second model's
    # kernels are the first one's only if training began from them (its own seed differs).
    tuned = train(tiny_set, tmp_path / "b",
                  TrainConfig(width=0.0625, input_size=64, epochs=1, batch_size=8,
                              val_fraction=0.25, steps_per_epoch=2, learning_rate=0.0, seed=7,
                              init_weights=str(start)))
    assert tuned["training"]["initialised_from"] == {"file": start.name,
                                                     "sha256": first["sha256"]}
    a = load_model(tmp_path / "a" / "manifest.json").model
    b = load_model(tmp_path / "b" / "manifest.json").model
    kernels = [(wa, wb) for wa, wb in zip(a.weights, b.weights, strict=True)
               if "kernel" in wa.path]
    assert kernels
    for wa, wb in kernels:
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())


def test_fine_tuning_needs_an_existing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="init_weights"):
        TrainConfig(init_weights=str(tmp_path / "missing.weights.h5"))


def test_time_budget_stops_training() -> None:
    from bcd_node.inference.train import TimeBudget
    model = build_vgg16_unet((32, 32, 3), 4, 0.0625)
    budget = TimeBudget(0.0)
    budget.set_model(model)
    model.stop_training = False
    budget.on_epoch_end(0)
    assert model.stop_training and budget.stopped_epoch == 1
