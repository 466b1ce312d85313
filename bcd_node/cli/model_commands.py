"""Sub-commands of ``bcd-node``: ``synth``, ``train``, ``evaluate``, ``analyze``.

:func:`register` adds them to the CLI's sub-parsers; each handler takes the parsed
:class:`argparse.Namespace` and returns the exit code. Heavy imports (Keras) happen inside the
handlers so ``bcd-node --help`` stays fast. ``python -m bcd_node.cli.model_commands`` runs the same
commands without the rest of the CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from bcd_node.errors import ValidationError

if TYPE_CHECKING:
    from bcd_node.inference.predictor import Predictor
    from bcd_node.settings import ModelSettings, Settings

LOGGER = logging.getLogger(__name__)


class _PredictorOptions(TypedDict, total=False):
    """Keyword arguments of :class:`~bcd_node.inference.predictor.Predictor` from the settings
    and the command line."""

    weights: Path | None
    precision: str
    threads: int
    batch_size: int
    review_threshold: float
    default_um_per_pixel: float


_OptionName = Literal["weights", "precision", "threads", "batch_size", "review_threshold"]
_OPTION_NAMES: tuple[_OptionName, ...] = ("weights", "precision", "threads", "batch_size",
                                          "review_threshold")


def _settings(args: argparse.Namespace) -> Settings | None:
    """The settings ``bcd_node.cli`` loaded once (None when run without it)."""
    cached: Settings | None = getattr(args, "_settings", None)
    return cached


def _model_settings(args: argparse.Namespace) -> ModelSettings | None:
    """``settings.model`` from ``--config`` (None when settings cannot be loaded)."""
    cached = _settings(args)  # loaded once by bcd_node.cli
    if cached is not None:
        return cached.model
    try:
        from bcd_node.settings import load_settings
    except ImportError:  # pragma: no cover - settings ship with bcd-node
        return None
    return load_settings(getattr(args, "config", None)).model


def _predictor_options(args: argparse.Namespace) -> _PredictorOptions:
    model = _model_settings(args)
    opts: _PredictorOptions = {}
    if model is not None:
        opts = {"weights": model.weights, "precision": model.precision, "threads": model.threads,
                "batch_size": model.batch_size, "review_threshold": model.review_threshold,
                "default_um_per_pixel": model.default_um_per_pixel}
    for key in _OPTION_NAMES:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    if getattr(args, "weights", None) is not None and getattr(args, "review_threshold",
                                                              None) is None:
        # Another model on the command line: its own operating point, when it states one.
        from bcd_node.settings import model_review_threshold
        point = model_review_threshold(Path(args.weights))
        if point is not None:
            opts["review_threshold"] = point
    return opts


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic data set."""
    from bcd_node.inference.synth import write_dataset
    labels = write_dataset(args.out, args.count, args.seed, size=args.size,
                           fields_per_patient=args.fields_per_patient,
                           um_per_pixel=args.um_per_pixel)
    print(labels)
    return 0


def _robust_augment(args: argparse.Namespace) -> Any:
    """The robust augmentation's ranges, with ``--robust-scale`` when given."""
    from bcd_node.inference.train import RobustAugment
    default = RobustAugment()
    p_scale = default.p_scale if args.robust_scale_p is None else args.robust_scale_p
    if not 0.0 <= p_scale <= 1.0:
        raise ValidationError(f"--robust-scale-p must be a probability, got {p_scale:g}")
    if args.robust_scale is None:
        return RobustAugment(p_scale=p_scale)
    low, high = args.robust_scale
    if not 0.25 <= low <= 1.0 <= high <= 4.0:
        raise ValidationError(f"--robust-scale must be LOW <= 1 <= HIGH within 0.25..4, got "
                              f"{low:g} {high:g}")
    return RobustAugment(scale=(low, high), p_scale=p_scale)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model and write weights + manifest."""
    from bcd_node.inference.predictor import configure_threads
    from bcd_node.inference.train import TrainConfig, train
    configure_threads(args.threads)
    config = TrainConfig(width=args.width, input_size=args.input_size,
                         field_size=args.field_size or args.input_size, epochs=args.epochs,
                         batch_size=args.batch_size, learning_rate=args.learning_rate,
                         patience=args.patience, val_fraction=args.val_fraction, seed=args.seed,
                         augment="none" if args.no_augment else args.augment,
                         robust=_robust_augment(args),
                         vgg16_weights=args.vgg16_weights, init_weights=args.init_weights,
                         um_per_pixel=args.um_per_pixel,
                         name=args.name, version=args.model_version, max_minutes=args.max_minutes)
    tail = getattr(args, "argv_tail", None)
    if tail is None and "train" in sys.argv:
        tail = sys.argv[sys.argv.index("train") + 1:]
    command = "bcd-node train " + " ".join(shlex.quote(a) for a in tail or [])
    manifest = train(args.data, args.out, config, test_dir=args.test, cache_dir=args.cache,
                     command=command)
    print(json.dumps({"weights": str(Path(args.out) / manifest["weights_file"]),
                      "metrics": {k: {m: v[m] for m in ("accuracy", "macro_f1", "mean_dice", "ece")}
                                  for k, v in manifest["metrics"].items()}}, indent=2))
    return 0


def _evaluate_shifts(args: argparse.Namespace, predictor: Predictor) -> int:
    """``evaluate --shifts`` / ``--quality-curves``: tables on a generated held-out set."""
    from bcd_node.inference import shifts as sh
    command = (f"bcd-node evaluate {'--shifts' if args.shifts else '--quality-curves'} "
               f"--count {args.count} --seed {args.seed}")
    if args.shifts:
        rows = sh.run_shifts(predictor, args.count, args.seed)
        table = sh.format_table(rows)
    else:
        rows = sh.quality_curves(predictor, args.count, args.seed)
        table = sh.format_curves(rows)
    if args.json:
        print(json.dumps({"command": command, "rows": rows}, indent=2))
    else:
        print(f"{predictor.model_info['name']} {predictor.model_info['version']}: "
              f"{args.count} generated fields (seed {args.seed}, unused in training)")
        print(table)
        print(f"\nReproduce: {command}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model on a labelled folder and print the metrics as JSON."""
    from bcd_node.inference import data as data_mod
    from bcd_node.inference.evaluate import evaluate_model
    from bcd_node.inference.loader import WeightsError
    from bcd_node.inference.predictor import Predictor
    if not (args.shifts or args.quality_curves) and args.data is None:
        print("bcd-node evaluate: give a labelled folder, --shifts or --quality-curves",
              file=sys.stderr)
        return 2
    try:
        predictor = Predictor(**_predictor_options(args), warm_up=False)
    except WeightsError as exc:
        print(f"bcd-node: model error: {exc}", file=sys.stderr)
        return 1
    if args.shifts or args.quality_curves:
        return _evaluate_shifts(args, predictor)
    samples = data_mod.scan_dataset(args.data)
    size = predictor.input_size
    images, labels, masks = data_mod.load_arrays(samples, size)
    report = evaluate_model(predictor.model, predictor.temperature, images, labels, masks,
                            predictor.batch_size)
    report["data"] = str(args.data)
    report["patients"] = len({s.patient for s in samples})
    report["model"] = predictor.model_info
    print(json.dumps(report, indent=2))
    return 0


def cmd_fit_ood(args: argparse.Namespace) -> int:
    """Fit the out-of-distribution signal of a model and write its operating point."""
    from bcd_node.inference.loader import WeightsError
    from bcd_node.inference.ood_fit import fit_and_write
    from bcd_node.inference.predictor import Predictor
    try:
        predictor = Predictor(weights=args.weights, precision="float32", ood=False,
                              warm_up=False)
    except WeightsError as exc:
        print(f"bcd-node: model error: {exc}", file=sys.stderr)
        return 1
    tail = getattr(args, "argv_tail", None)
    if tail is None and "fit-ood" in sys.argv:
        tail = sys.argv[sys.argv.index("fit-ood") + 1:]
    entry = fit_and_write(predictor, fit_seed=args.fit_seed, fit_count=args.fit_count,
                          val_seed=args.val_seed, val_count=args.val_count,
                          flag_share=args.flag_share, augment=args.augment,
                          command="bcd-node fit-ood " + " ".join(shlex.quote(a)
                                                                 for a in tail or []))
    print(json.dumps(entry, indent=2))
    return 0


def _analyze_to_dicom(args: argparse.Namespace, predictor: Predictor, name: str) -> int:
    """Analyse one DICOM file and write the SEG, SR and Encapsulated PDF the node would send."""
    from bcd_node import __version__
    from bcd_node.analysis.findings import analyze_dataset, write_dicom_outputs
    from bcd_node.errors import PermanentError
    from dicom.algorithm import Algorithm
    from dicom.errors import DicomError
    from dicom.pixels import read_dataset

    info = predictor.model_info
    settings = _settings(args)
    root = settings.uids.root if settings is not None else "2.25"
    try:
        ds = read_dataset(name)
        analysis = analyze_dataset(
            ds, predictor, algorithm=Algorithm(
                name=info["name"], version=info["version"], software_version=__version__,
                institution_name=(settings.dicom.institution_name or None)
                if settings is not None else None),
            review_threshold=predictor.review_threshold, uid_root=root,
            demonstration_model=bool(predictor.manifest.get("demonstration", True)),
            default_um_per_pixel=args.um_per_pixel)
        written = write_dicom_outputs(analysis, Path(args.dicom_out), Path(name).stem)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
        if isinstance(exc, DicomError):
            message = f"{exc} (--dicom-out needs a DICOM image; `bcd-node import` makes one)"
        elif isinstance(exc, (PermanentError, OSError, ValueError)):
            message = str(exc)
        else:  # unexpected: name its kind
            message = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"file": name, "error": message}) if args.json
              else f"{name}: error: {message}")
        return 1
    c = analysis.combined
    record = {"file": name, "stage": c.stage, "probabilities": c.probabilities,
              "blast_count": c.blast_count, "blast_area_fraction": c.blast_area_fraction,
              "quality": c.quality, "needs_review": c.needs_review,
              "review_reasons": list(c.review_reasons), "um_per_pixel": c.um_per_pixel,
              "scale_source": c.scale_source,
              "dicom_outputs": [str(p) for p in written]}
    if args.json:
        print(json.dumps(record))
    else:
        outputs = ", ".join(str(p) for p in written) or "none (quality insufficient)"
        print(f"{name}: {c.stage or 'quality insufficient'}; wrote {outputs}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Analyse image files; print one JSON object per file (per frame for multi-frame DICOM)."""
    import cv2

    from bcd_node.analysis.findings import overlay
    from bcd_node.inference.loader import WeightsError
    from bcd_node.inference.predictor import Predictor, load_image_frames
    try:
        predictor = Predictor(**_predictor_options(args))
    except WeightsError as exc:
        print(f"bcd-node: model error: {exc}", file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.files:
        if args.dicom_out is not None:
            status |= _analyze_to_dicom(args, predictor, name)
            continue
        try:
            frames = load_image_frames(name)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            print(json.dumps({"file": name, "error": str(exc)}) if args.json
                  else f"{name}: error: {exc}")
            status = 1
            continue
        results = predictor.predict(frames, um_per_pixel=args.um_per_pixel)
        for index, (frame, result) in enumerate(zip(frames, results)):
            record = result.to_dict(name)
            if len(frames) > 1:
                record["frame"] = index + 1
            if out_dir is not None and result.mask is not None:
                stem = Path(name).stem + (f"_f{index + 1}" if len(frames) > 1 else "")
                mask_path = out_dir / f"{stem}_mask.png"
                overlay_path = out_dir / f"{stem}_overlay.png"
                cv2.imwrite(str(mask_path), result.mask * 255)
                cv2.imwrite(str(overlay_path),
                            cv2.cvtColor(overlay(frame, result.mask), cv2.COLOR_RGB2BGR))
                record["mask_png"], record["overlay_png"] = str(mask_path), str(overlay_path)
            if args.json:
                print(json.dumps(record))
            else:
                probs = record["probabilities"]
                top = f"{max(probs.values()):.2f}" if probs else "-"
                print(f"{name}: {record['stage'] or 'quality insufficient'} (p={top}) "
                      f"blasts={record['blast_count']} review={record['needs_review']} "
                      f"quality={record['quality']['status']}")
    return status


def _predictor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file or manifest.json (default: model.weights, else bundled)")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default=None,
                   help="compute precision (default: model.precision)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads, 0 = automatic")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="tiles per model call")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``synth``, ``train``, ``evaluate`` and ``analyze`` to the CLI's sub-parsers."""
    p = subparsers.add_parser("synth", help="write synthetic blood-smear fields",
                              description="Write synthetic blood-smear fields (SMEARS.md): "
                                          "images/, masks/, labels.csv.")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--count", required=True, type=int, help="number of fields")
    p.add_argument("--seed", required=True, type=int, help="base seed (same seed, same bytes)")
    p.add_argument("--size", type=int, default=256, help="field size in pixels (default 256)")
    p.add_argument("--fields-per-patient", dest="fields_per_patient", type=int, default=8)
    p.add_argument("--um-per-pixel", dest="um_per_pixel", type=float, default=0.25,
                   help="physical pixel size to draw at, in µm (default 0.25, the resolution the "
                        "bundled model was trained at)")
    p.set_defaults(func=cmd_synth)

    p = subparsers.add_parser("train", help="train the VGG16 + U-Net model",
                              description="Train on a labelled folder (synthetic layout, "
                                          "public ALL layout Original/ + Segmented/, or class "
                                          "folders).")
    p.add_argument("data", type=Path, help="training data folder (split by patient into train/val)")
    p.add_argument("--out", required=True, type=Path, help="folder for weights + manifest.json")
    p.add_argument("--test", type=Path, default=None, help="held-out test folder to evaluate")
    p.add_argument("--width", type=float, default=0.125, help="filter width multiplier")
    p.add_argument("--input-size", dest="input_size", type=int, default=128,
                   help="model input side (default 128)")
    p.add_argument("--field-size", dest="field_size", type=int, default=256,
                   help="side of one field of view in image pixels, resized to --input-size "
                        "(default 256)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=6, help="early-stopping patience (epochs)")
    p.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--augment", choices=("none", "light", "robust"), default="light",
                   help="training augmentation: light (rot90/flips, mild blur and colour jitter; "
                        "the bundled model's), robust (adds scale ×0.75–1.33, HED stain, hue and "
                        "saturation, blur σ 0–2.5, JPEG 30–95, gamma and noise) or none "
                        "(default light)")
    p.add_argument("--no-augment", dest="no_augment", action="store_true",
                   help="same as --augment none")
    p.add_argument("--robust-scale", dest="robust_scale", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"),
                   help="magnification range of --augment robust (default 0.75 1.33)")
    p.add_argument("--robust-scale-p", dest="robust_scale_p", type=float, default=None,
                   help="probability of a field's magnification under --augment robust "
                        "(default 0.5)")
    p.add_argument("--um-per-pixel", dest="um_per_pixel", type=float, default=None,
                   help="µm per pixel of the training fields, written in the manifest as the "
                        "model's resolution (0.25 for `bcd-node synth`'s default)")
    p.add_argument("--vgg16-weights", dest="vgg16_weights", default=None,
                   help="local VGG16 ImageNet notop weights file (width 1.0 only)")
    p.add_argument("--init-weights", dest="init_weights", default=None,
                   help="start from these weights (same architecture, width and input size) "
                        "instead of random ones: fine-tuning, e.g. the bundled model under "
                        "--augment robust")
    p.add_argument("--cache", type=Path, default=None, help="folder for cached arrays (.npz)")
    p.add_argument("--max-minutes", dest="max_minutes", type=float, default=None,
                   help="stop after the epoch that passes this wall-time budget")
    p.add_argument("--threads", type=int, default=0, help="CPU threads, 0 = automatic")
    p.add_argument("--name", default="bcd-vgg16unet-synthetic")
    p.add_argument("--model-version", dest="model_version", default="1.0.0")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="evaluate a model on a labelled folder (JSON)",
                              description="Print accuracy, macro-F1, confusion matrix, mean Dice "
                                          "and ECE as JSON.")
    p.add_argument("data", type=Path, nargs="?", default=None,
                   help="labelled folder (not with --shifts or --quality-curves)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shifts", action="store_true",
                       help="run a generated held-out set under the fixed suite of shifts "
                            "(magnification with and without pixel spacing, stain, gamma, "
                            "blur, JPEG, noise, darkness, contrast, pairs) and print per shift "
                            "accuracy answered, refused, flagged, accuracy not flagged and the "
                            "confidently-wrong rate")
    group.add_argument("--quality-curves", dest="quality_curves", action="store_true",
                       help="accuracy against blur, darkness and contrast with the quality "
                            "gate off, and the gate's measures at each level")
    p.add_argument("--count", type=int, default=160,
                   help="generated fields for --shifts / --quality-curves (default 160)")
    p.add_argument("--seed", type=int, default=3,
                   help="seed of the generated held-out set (default 3, unused in training)")
    p.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    _predictor_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("fit-ood", help="fit the 'unlike the training data' signal",
                              description="Fit the feature-density model of a model's stage "
                                          "embedding on generated training-like fields, choose "
                                          "its threshold on validation fields of another seed, "
                                          "and write both beside the weights and in the "
                                          "manifest (the weights are not changed).")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file or manifest.json (default: the bundled model)")
    p.add_argument("--fit-seed", dest="fit_seed", type=int, default=11)
    p.add_argument("--fit-count", dest="fit_count", type=int, default=480)
    p.add_argument("--val-seed", dest="val_seed", type=int, default=12)
    p.add_argument("--val-count", dest="val_count", type=int, default=240)
    p.add_argument("--flag-share", dest="flag_share", type=float, default=0.02,
                   help="share of in-distribution validation fields flagged (default 0.02)")
    p.add_argument("--augment", action="store_true",
                   help="fit and validate on fields under the robust augmentation the model "
                        "was trained with (its manifest's training.augment_robust): what it "
                        "was trained to read is not 'unlike the training data'")
    p.set_defaults(func=cmd_fit_ood)

    p = subparsers.add_parser("analyze", help="analyse PNG/JPEG/DICOM files",
                              description="Analyse blood-smear images (demonstration model, not "
                                          "for clinical use).")
    p.add_argument("files", nargs="+", help="PNG, JPEG or DICOM files")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--out", type=Path, default=None, help="write mask and overlay PNGs here")
    p.add_argument("--dicom-out", dest="dicom_out", type=Path, default=None,
                   help="for DICOM inputs: write the SEG, SR and Encapsulated PDF the node would "
                        "send (FILE-seg.dcm, FILE-sr.dcm, FILE-pdf.dcm) here")
    p.add_argument("--review-threshold", dest="review_threshold", type=float, default=None)
    p.add_argument("--um-per-pixel", dest="um_per_pixel", type=float, default=None,
                   help="pixel size of PNG/JPEG inputs (and of DICOM inputs that state none), "
                        "in µm; without it the default is used and results say \"scale "
                        "unknown\"")
    _predictor_arguments(p)
    p.set_defaults(func=cmd_analyze)


def main(argv: list[str] | None = None) -> int:
    """Run the sub-commands without the rest of the CLI.

    ``python -m bcd_node.cli.model_commands synth|train|evaluate|analyze ...``
    """
    parser = argparse.ArgumentParser(prog="python -m bcd_node.cli.model_commands")
    parser.add_argument("--config", default=None)
    register(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv_tail = argv[argv.index(args.command) + 1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
