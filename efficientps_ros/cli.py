"""The `efficientps` command: inspect, run, convert, benchmark, demo."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .paths import writable_file

# A split names folders and files inside a dataset.
SPLIT_NAMES = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Scenes `synth` writes in one split: a million at 256x512 are hundreds of GB already.
MAX_SCENES = 1_000_000


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="preset name (b5_cityscapes, small) or YAML path")
    parser.add_argument("--checkpoint", default=None, help="safetensors checkpoint written by this package")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])


def cmd_info(args: argparse.Namespace) -> int:
    from .model import build_model, load_config
    from .model.efficientps import parameter_counts

    config = load_config(args.config or "b5_cityscapes")
    counts = parameter_counts(build_model(config))
    for name, count in counts.items():
        print(f"{name:16s} {count:>12,d}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from .data.cityscapes_layout import PredictionWriter, image_id
    from .predictor import Predictor
    from .visualize import PanopticPainter

    out = Path(args.out)
    _check_distinct_names(args.images, image_id, out)
    # Made before the model loads: a run must not end at its first output.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot be made ({exc.strerror or exc})") from None
    predictor = Predictor(args.config or (None if args.checkpoint else "small"), args.checkpoint,
                          device=args.device, precision=args.precision)
    painter = PanopticPainter(predictor.config.classes)
    official = PredictionWriter(out, predictor.config.classes)
    for path in args.images:
        image = _read_image(path)
        result = predictor.predict(image)
        stem = Path(path).stem
        Image.fromarray(result.semantic).save(out / f"{stem}_semantic.png")
        Image.fromarray(result.instance).save(out / f"{stem}_instance.png")
        Image.fromarray(painter.overlay(image, result, 0.5)).save(out / f"{stem}_overlay.png")
        np.save(out / f"{stem}_panoptic.npy", result.panoptic)
        instances = [vars(i) for i in result.instances]
        (out / f"{stem}_instances.json").write_text(json.dumps(instances, indent=1))
        official.write(image_id(path), result.semantic, result.instance)
        print(f"{path}: {len(instances)} instances, {result.model_time * 1000:.0f} ms -> {out}/{stem}_*")
    official.close()
    print(f"label-id PNGs and COCO-panoptic {out}/panoptic.json + {out}/panoptic/ for cityscapesscripts")
    return 0


def _check_distinct_names(images: list[str], image_id, out: Path) -> None:
    """Refuse two images whose outputs would have one name: the second's would overwrite the first's,
    and panoptic.json would list its id twice."""
    seen: dict[str, str] = {}
    for path in images:
        # The file outputs are named by stem, the panoptic ones by image id; equal stems give equal ids.
        name = image_id(path)
        if name in seen:
            raise ValueError(f"{seen[name]} and {path}: both would write outputs named {name!r} into --out {out}; "
                             f"allowed: images with distinct names (run the others with another --out)")
        seen[name] = path


def _read_image(path: str):
    """An image file as HxWx3 uint8 RGB; a missing, unreadable or oversized file is one ValueError naming it."""
    from .data.datasets import read_rgb

    return read_rgb(path)


def _split_name(split: str) -> str:
    """A split is a folder name inside the dataset: refuse paths, which would lead out of it."""
    if not SPLIT_NAMES.fullmatch(split):
        raise ValueError(f"--split {split!r}: allowed: 1 to 64 letters, digits, '_' or '-'")
    return split


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.datasets import PanopticDataset, load_class_table
    from .evaluate import check_brightness, check_same_classes, evaluate, format_table
    from .model import load_config
    from .model.checkpoint import read_config
    from .predictor import Predictor

    # The dataset and the class table are checked before the model is built: a typo costs no model load.
    if args.config or not args.checkpoint:
        config = load_config(args.config or "small")
    else:
        config = read_config(args.checkpoint)
    classes = load_class_table(args.classes) if args.classes else config.classes
    check_same_classes(config.classes, classes)
    check_brightness(args.brightness)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    dataset = PanopticDataset(args.data, _split_name(args.split), classes)
    json_path = writable_file(args.json, "--json") if args.json else None
    predictor = Predictor(config, args.checkpoint, device=args.device, precision=args.precision)
    summary = evaluate(predictor, dataset, limit=args.limit, brightness=args.brightness,
                       save_predictions=args.save_predictions)
    summary.update(data=str(args.data), split=args.split, weights=str(predictor.weights_source))
    print(format_table(summary))
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=1, allow_nan=False))
        print(f"wrote {json_path}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .data.cityscapes_layout import DatasetWriter
    from .data.synthetic import scene_seed, street_scene
    from .model.config import CITYSCAPES_CLASSES, parse_size

    height, width = parse_size(args.size)
    if args.count < 1 or args.seed < 0:
        raise ValueError(f"--count must be at least 1 and --seed non-negative, got {args.count} and {args.seed}")
    if args.count > MAX_SCENES:
        raise ValueError(f"--count {args.count}: allowed: at most {MAX_SCENES:,} scenes in one split")
    split = _split_name(args.split)
    listing = Path(args.out) / "gtFine" / f"cityscapes_panoptic_{split}.json"
    if listing.exists():
        # Its scenes would stay on disk, no longer listed.
        raise ValueError(f"{args.out}: split {split!r} exists already ({listing}); give another --out or --split")
    writer = DatasetWriter(args.out, split, CITYSCAPES_CLASSES)
    for index in tqdm(range(args.count), desc="synth", unit="scene"):
        scene = street_scene(height, width, seed=scene_seed(args.split, args.seed, index))
        # Cityscapes names images {city}_{sequence}_{frame}: here the stream seed and the index.
        name = f"synthetic_{args.seed:06d}_{index:06d}"
        writer.write(name, scene.image, scene.semantic, scene.instance, scene.crowd)
    # Not in a `with`: the listing is written only once every scene is, so that a run that
    # fails part way leaves no split listing fewer scenes than asked for, and a rerun is not refused.
    writer.close()
    print(f"wrote {args.count} scenes of split {args.split!r} to {args.out}")
    return 0


def cmd_convert_official(args: argparse.Namespace) -> int:
    from .model.official import convert_official

    path = convert_official(args.checkpoint, args.out, dataset=args.dataset)
    print(f"wrote {path}")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    import torch

    from .model import build_model
    from .model.checkpoint import load_weights, save_checkpoint
    from .train import check_outputs
    from .training.averaging import average_weights

    # The check `train --out` makes, before any checkpoint is read: a folder, or a
    # folder that takes no files, would otherwise end the run with a traceback.
    out = Path(args.out)
    check_outputs(out, out.parent)
    weights, config = average_weights(args.checkpoints)
    model = build_model(config)
    load_weights(model, weights, args.checkpoints[0])
    path = save_checkpoint(model, config, out, dtype=torch.float16 if args.fp16 else None)
    print(f"wrote {path}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .model.config import parse_size
    from .ros.bag.synth import DriveOptions
    from .ros.demo import DemoOptions, run_demo

    height, width = parse_size(args.size)
    return run_demo(DemoOptions(DriveOptions(args.seconds, args.rate, height, width), Path(args.out)))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


def cmd_bag(args: argparse.Namespace) -> int:
    """Dispatch `efficientps bag play|record|run|synth`."""
    if args.bag_command == "play":
        from .ros.bag.play import PlayOptions, play_bag

        options = PlayOptions(args.rate, tuple(args.topics or ()), args.loop, args.clock, args.start,
                              args.duration, args.wait_for_subscribers, args.subscribers)
        return 0 if play_bag(args.bag, options) else 1
    if args.bag_command == "record":
        from .ros.bag.record import RecordOptions, record_bag

        options = RecordOptions(tuple(args.topics or ()), args.all_outputs, args.output_namespace,
                                args.storage, args.duration)
        record_bag(args.out, options)
        return 0
    if args.bag_command == "run":
        from .ros.bag.offline import run_bag

        parameters = {"device": args.device, "precision": args.precision, "model.checkpoint": args.checkpoint or "",
                      "model.preset_or_config": args.config or ""}
        parameters.update(_node_parameters(args.param or []))
        report = run_bag(args.bag, args.out, args.topics, parameters, args.storage)
        print(f"{report.frames} frames read, {report.skipped} skipped; outputs in {args.out}")
        # 0 only when every frame got its outputs.
        return 1 if report.failure or report.skipped else 0
    from .model.config import parse_size
    from .ros.bag.synth import DriveOptions, synth_bag

    height, width = parse_size(args.size)
    options = DriveOptions(args.seconds, args.rate, height, width, args.compressed, args.cameras, args.storage,
                           args.seed)
    frames = synth_bag(args.out, options)
    print(f"wrote {frames} frames per camera to {args.out}")
    return 0


def _node_parameters(pairs: list[str]) -> dict:
    """NAME=VALUE (or NAME:=VALUE) pairs, values read as YAML, as --ros-args -p reads them."""
    import yaml

    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        try:
            parameters[name.removesuffix(":")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise ValueError(f"--param {pair!r}: the value is not valid YAML ({reason})") from None
    return parameters


def _add_bag_parser(sub) -> None:
    bag = sub.add_parser("bag", help="play, record, run the node offline on, or synthesise bags")
    commands = bag.add_subparsers(dest="bag_command", required=True)
    storage = {"choices": ["mcap", "sqlite3"], "default": "mcap"}

    play = commands.add_parser("play", help="replay a rosbag2 or ROS 1 bag over DDS")
    play.add_argument("bag", help="rosbag2 folder or ROS 1 .bag file")
    play.add_argument("--rate", type=float, default=1.0)
    play.add_argument("--topics", nargs="+", help="only these topics")
    play.add_argument("--loop", action="store_true")
    play.add_argument("--clock", action="store_true", help="publish /clock from the bag's time")
    play.add_argument("--start", type=float, default=0.0, help="seconds into the bag")
    play.add_argument("--duration", type=float, default=None, help="seconds of the bag to play")
    play.add_argument("--wait-for-subscribers", type=float, default=0.0, metavar="SECONDS",
                      help="wait up to this long for --subscribers on every image topic")
    play.add_argument("--subscribers", type=int, default=1, help="how many subscribers to wait for")

    record = commands.add_parser("record", help="record topics to a new rosbag2 until Ctrl-C")
    record.add_argument("out")
    record.add_argument("--topics", nargs="+")
    record.add_argument("--all-outputs", action="store_true", help="every output topic of the node")
    record.add_argument("--output-namespace", default="efficientps")
    record.add_argument("--storage", **storage)
    record.add_argument("--duration", type=float, default=None, help="seconds")

    run = commands.add_parser("run", help="the node's pipeline over every image of a bag, offline")
    _add_model_args(run)
    run.add_argument("bag")
    run.add_argument("out")
    run.add_argument("--topics", nargs="+", help="image topics (default: every Image and CompressedImage)")
    run.add_argument("--param", action="append", metavar="NAME=VALUE", help="a node parameter, e.g. min_stuff_area=256")
    run.add_argument("--storage", **storage)

    synth = commands.add_parser("synth", help="write a synthetic drive")
    synth.add_argument("out")
    synth.add_argument("--seconds", type=float, default=6.0)
    synth.add_argument("--rate", type=float, default=5.0)
    synth.add_argument("--size", default="256x512", help="HxW")
    synth.add_argument("--compressed", action="store_true", help="JPEG CompressedImage on <topic>/compressed")
    synth.add_argument("--cameras", type=int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--storage", **storage)
    bag.set_defaults(func=cmd_bag)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="efficientps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="parameter counts per module")
    info.add_argument("--config", default=None)
    info.set_defaults(func=cmd_info)

    predict = sub.add_parser("predict", help="run on image files and write the maps")
    _add_model_args(predict)
    predict.add_argument("images", nargs="+")
    predict.add_argument("--out", default="outputs/predict")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="PQ, SQ, RQ and mIoU on a Cityscapes-layout dataset")
    _add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="dataset root: leftImg8bit/ and gtFine/ with the panoptic JSON")
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--classes", default=None, help="YAML class table of a non-Cityscapes dataset")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N images")
    evaluate.add_argument("--brightness", type=float, default=1.0, help="scale input brightness by this factor")
    evaluate.add_argument("--json", default=None, help="write the summary and per-class counts here")
    evaluate.add_argument("--save-predictions", default=None, metavar="DIR",
                          help="write label-id PNGs (DIR/labelIds) and COCO-panoptic PNGs + JSON (DIR/panoptic, "
                               "DIR/panoptic.json) for cityscapesscripts, and DIR/ground_truth.json, the split's "
                               "JSON cut to the images evaluated: give that to evaluatePanoptic as the ground-truth "
                               "JSON, with the split's own PNG folder, to score exactly those images after --limit")
    evaluate.set_defaults(func=cmd_evaluate)

    synth = sub.add_parser("synth", help="write synthetic street scenes as a Cityscapes-layout dataset")
    synth.add_argument("out")
    synth.add_argument("--count", type=int, default=50)
    synth.add_argument("--seed", type=int, default=0, help="stream seed; each split has its own streams")
    synth.add_argument("--size", default="256x512", help="HEIGHTxWIDTH")
    synth.add_argument("--split", default="val")
    synth.set_defaults(func=cmd_synth)

    convert = sub.add_parser("convert-official", help="import the authors' mmcv checkpoint")
    convert.add_argument("checkpoint")
    convert.add_argument("out")
    convert.add_argument("--dataset", default="cityscapes", choices=["cityscapes", "kitti"])
    convert.set_defaults(func=cmd_convert_official)

    average = sub.add_parser("average", help="the mean of the weights of several checkpoints of one run")
    average.add_argument("checkpoints", nargs="+",
                         help="training checkpoints (iter_*.json or .safetensors) or inference checkpoints")
    average.add_argument("--out", required=True, help="inference checkpoint to write (.safetensors)")
    average.add_argument("--fp16", action="store_true", help="store the weights in half precision")
    average.set_defaults(func=cmd_average)

    demo = sub.add_parser("demo", help="a synthetic drive bag played into the node, its outputs recorded")
    demo.add_argument("--seconds", type=float, default=6.0, help="length of the drive")
    demo.add_argument("--rate", type=float, default=5.0, help="camera frames per second")
    demo.add_argument("--size", default="256x512", help="HxW of the camera")
    demo.add_argument("--out", default="outputs/demo")
    demo.set_defaults(func=cmd_demo)

    # Listed for --help; main() hands its arguments to the training module's own parser.
    sub.add_parser("train", help="train on synthetic scenes or a dataset, alone or under torchrun (efficientps train --help)")

    bench = sub.add_parser("bench", help="latency per stage, camera message to outputs published")
    _add_model_args(bench)
    bench.add_argument("--height", type=int, default=1024)
    bench.add_argument("--width", type=int, default=2048)
    bench.add_argument("--batch", type=int, default=1, help="cameras per forward pass")
    bench.add_argument("--frames", type=int, default=20, help="frames timed after the warm-up")
    bench.add_argument("--warmup", type=int, default=2, help="frames run before timing")
    bench.add_argument("--compile", action="store_true", help="compile the dense part (static shapes)")
    bench.add_argument("--agreement-scenes", type=int, default=4,
                       help="scenes the agreement with the plain network is pooled over: the timed frame's, "
                            "then more, untimed")
    bench.add_argument("--score-threshold", type=float, default=None,
                       help="fusion and box-head score threshold; low values load untrained weights' RoI heads")
    bench.add_argument("--ros", choices=["auto", "on", "off"], default="auto",
                       help="the ROS stages: where rclpy is (auto), required (on), or skipped (off)")
    bench.add_argument("--json", default=None, help="write the results here")
    bench.set_defaults(func=cmd_bench)
    _add_bag_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as exc:
        # Bad input of every kind (config, checkpoint, device), and files that
        # cannot be read or written, arrive here with a message that names
        # them; a traceback would only bury it.
        print(f"efficientps {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
