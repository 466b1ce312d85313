"""Inference benchmark: batched predictor vs a naive per-image ``model.predict`` loop.

Measures, in one run on this machine, images/s of

* the batched :class:`~bcd_node.inference.predictor.Predictor` and a naive loop that calls
  ``model.predict`` on one image at a time,
* for the bundled width and for the full-width (1.0) VGG16-UNet at 256 × 256,
* in float32 and in bfloat16 (Keras mixed precision),

and prints the achieved GFLOP/s (from the model's counted FLOPs) next to the float32 GEMM GFLOP/s
measured in the same run with ``keras.ops.matmul``. With ``--accuracy`` it also evaluates the
bundled model in both precisions on a held-out synthetic folder (accuracy and Dice differences).

Only Keras 3 APIs are used, so the same script runs with ``KERAS_BACKEND=jax`` or ``torch`` (on a
GPU too). The full-width model has no trained weights; its speed does not depend on them.

Usage::

    python benchmarks/inference.py                       # all measurements, prints a table + JSON
    python benchmarks/inference.py --accuracy DIR        # plus bf16 vs fp32 accuracy on DIR
    python benchmarks/inference.py --quick               # fewer images (smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from bcd_node.inference import data as data_mod  # noqa: E402
from bcd_node.inference.evaluate import evaluate_model  # noqa: E402
from bcd_node.inference.loader import LoadedModel, load_model  # noqa: E402
from bcd_node.inference.model import ARCHITECTURE, CLASSES, build_vgg16_unet, count_flops  # noqa: E402
from bcd_node.inference.predictor import Predictor, cpu_flags, gpu_devices  # noqa: E402
from bcd_node.inference.preprocess import resize  # noqa: E402
from bcd_node.inference.synth import generate_field, patient_params  # noqa: E402


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 GEMM throughput of the Keras backend (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = keras.ops.convert_to_tensor(rng.standard_normal((n, n)).astype(np.float32))
    b = keras.ops.convert_to_tensor(rng.standard_normal((n, n)).astype(np.float32))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        keras.ops.convert_to_numpy(keras.ops.matmul(a, b))
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def test_images(count: int, size: int = 256) -> list[np.ndarray]:
    """Synthetic fields (one patient per field, classes cycling)."""
    rng = np.random.default_rng(123)
    return [generate_field(10_000 + k, CLASSES[k % 4], patient_params(rng), size)[0]
            for k in range(count)]


def untrained_loaded(width: float, dtype: str | None, size: int = 256) -> LoadedModel:
    """An untrained model at ``size`` × ``size`` wrapped like a loaded one (speed only)."""
    model = build_vgg16_unet((size, size, 3), len(CLASSES), width, dtype=dtype)
    manifest = {"name": f"vgg16-unet-w{width:g}-untrained", "version": "0", "architecture":
                ARCHITECTURE, "width": width, "input_shape": [size, size, 3],
                "classes": list(CLASSES),
                "temperature": 1.0, "sha256": "0" * 64, "weights_file": "-", "format": "-"}
    return LoadedModel(model, manifest, 1.0, Path("-"))


def time_predictor(predictor: Predictor, images: list[np.ndarray], repeats: int = 2) -> float:
    """Images/s of the batched predictor (best of ``repeats`` passes, after a warm-up pass)."""
    predictor.predict(images[:predictor.batch_size])
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        predictor.predict(images)
        best = min(best, time.perf_counter() - t)
    return len(images) / best


def time_model_only(model: Any, images: np.ndarray, batch_size: int) -> float:
    """Images/s of ``predict_on_batch`` alone (no pre/post-processing), for the GFLOP/s figure."""
    x = images[:batch_size].astype(np.float32)
    model.predict_on_batch(x)
    reps = max(2, len(images) // len(x))
    t = time.perf_counter()
    for _ in range(reps):
        model.predict_on_batch(x)
    return reps * len(x) / (time.perf_counter() - t)


def time_naive(model: Any, images: list[np.ndarray]) -> float:
    """Images/s of a per-image ``model.predict`` loop (how a first attempt usually looks)."""
    model.predict(images[0][None].astype(np.float32), verbose=0)
    t = time.perf_counter()
    for img in images:
        model.predict(img[None].astype(np.float32), verbose=0)
    return len(images) / (time.perf_counter() - t)


def bench_config(label: str, loaded: LoadedModel, precision: str, images: list[np.ndarray],
                 naive_count: int, batch_size: int, gemm: float) -> dict[str, Any]:
    predictor = Predictor(loaded=loaded, precision=precision, batch_size=batch_size, warm_up=True)
    flops = count_flops(loaded.model)
    batched = time_predictor(predictor, images)
    side = predictor.input_size
    # The model's own input (the predictor resizes 256-px fields to it when they differ).
    model_images = [resize(img, (side, side)) for img in images]
    model_only = time_model_only(loaded.model, np.stack(model_images), batch_size)
    naive = time_naive(loaded.model, model_images[:naive_count])
    row = {
        "model": label, "width": loaded.manifest["width"], "precision": precision,
        "gflop_per_image": flops / 1e9, "batch_size": batch_size,
        "images_per_s_batched": batched, "images_per_s_naive": naive,
        "speedup_batched_vs_naive": batched / naive,
        "images_per_s_model_only": model_only,
        "achieved_gflops": model_only * flops / 1e9,
        "fraction_of_gemm": model_only * flops / 1e9 / gemm,
    }
    print(f"{label:<12} {precision:<9} {flops / 1e9:8.2f} {batched:9.2f} {naive:9.2f} "
          f"{batched / naive:6.2f}x {model_only * flops / 1e9:9.1f} "
          f"{100 * model_only * flops / 1e9 / gemm:6.1f}%", flush=True)
    return row


def accuracy_check(folder: Path, weights: Path | None, count: int) -> dict[str, Any]:
    """Bundled model in float32 and bfloat16 on a labelled folder."""
    samples = data_mod.scan_dataset(folder)[:count]
    out: dict[str, Any] = {"data": str(folder), "n": len(samples)}
    for precision, dtype in (("float32", None), ("bfloat16", "mixed_bfloat16")):
        loaded = load_model(weights, dtype=dtype)
        size = loaded.manifest["input_shape"][0]
        images, labels, masks = data_mod.load_arrays(samples, size)
        t = time.perf_counter()
        report = evaluate_model(loaded.model, loaded.temperature, images, labels, masks, 16)
        out[precision] = {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                          "mean_dice": report["mean_dice"], "ece": report["ece"],
                          "seconds": time.perf_counter() - t}
    out["accuracy_diff_points"] = 100 * (out["bfloat16"]["accuracy"] - out["float32"]["accuracy"])
    out["dice_diff"] = out["bfloat16"]["mean_dice"] - out["float32"]["mean_dice"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="default: bundled model")
    parser.add_argument("--images", type=int, default=64, help="images for the bundled width")
    parser.add_argument("--full-images", type=int, default=16, help="images for full width")
    parser.add_argument("--naive", type=int, default=16, help="images for the naive loop")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-width model")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument("--accuracy", type=Path, default=None,
                        help="labelled folder for the bf16-vs-fp32 accuracy check")
    parser.add_argument("--accuracy-count", type=int, default=480)
    parser.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.full_images, args.naive, args.batch_size = 8, 2, 2, 4

    flags = cpu_flags()
    env = {"backend": keras.backend.backend(), "keras": keras.__version__,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "gpus": gpu_devices(),
           "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
           "avx512f": "avx512f" in flags}
    print("environment:", json.dumps(env))
    gemm = gemm_gflops()
    print(f"float32 GEMM (keras.ops.matmul 2048^3): {gemm:.1f} GFLOP/s")

    bundled = load_model(args.weights)
    width = bundled.manifest["width"]
    precisions = ["float32"] + ([] if args.skip_bf16 else ["bfloat16"])
    images = test_images(max(args.images, args.full_images))
    print(f"{'model':<12} {'precision':<9} {'GFLOP/im':>8} {'batched/s':>9} {'naive/s':>9} "
          f"{'speed':>7} {'GFLOP/s':>9} {'%GEMM':>7}")
    rows = []
    for precision in precisions:
        loaded = bundled if precision == "float32" else load_model(args.weights,
                                                                   dtype="mixed_bfloat16")
        rows.append(bench_config(f"w{width:g}", loaded, precision, images[:args.images],
                                 args.naive, args.batch_size, gemm))
        # The bundled width at the full 256 × 256 input (untrained: speed does not need weights).
        loaded = untrained_loaded(width, None if precision == "float32" else "mixed_bfloat16")
        rows.append(bench_config(f"w{width:g}@256", loaded, precision, images[:args.images],
                                 args.naive, args.batch_size, gemm))
    if not args.skip_full:
        for precision in precisions:
            loaded = untrained_loaded(1.0, None if precision == "float32" else "mixed_bfloat16")
            rows.append(bench_config("w1@256", loaded, precision, images[:args.full_images],
                                     max(2, min(args.naive, args.full_images) // 2),
                                     min(args.batch_size, 8), gemm))
    result: dict[str, Any] = {"environment": env, "gemm_gflops": gemm, "rows": rows}
    for model in {r["model"] for r in rows}:
        by = {r["precision"]: r for r in rows if r["model"] == model}
        if "bfloat16" in by:
            result[f"bf16_speedup_{model}"] = (by["bfloat16"]["images_per_s_model_only"]
                                               / by["float32"]["images_per_s_model_only"])
            print(f"bf16 / fp32 speed ({model}): {result[f'bf16_speedup_{model}']:.2f}x")
    if args.accuracy is not None and not args.skip_bf16:
        result["accuracy"] = accuracy_check(args.accuracy, args.weights, args.accuracy_count)
        print("bf16 vs fp32:", json.dumps(result["accuracy"]))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
