"""The `efficientps` command: inspect, run, convert, benchmark, demo."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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

    from .predictor import Predictor
    from .visualize import PanopticPainter

    predictor = Predictor(args.config or (None if args.checkpoint else "small"), args.checkpoint,
                          device=args.device, precision=args.precision)
    painter = PanopticPainter(predictor.config.classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = np.asarray(Image.open(path).convert("RGB"))
        result = predictor.predict(image)
        stem = Path(path).stem
        Image.fromarray(result.semantic).save(out / f"{stem}_semantic.png")
        Image.fromarray(result.instance).save(out / f"{stem}_instance.png")
        Image.fromarray(painter.overlay(image, result, 0.5)).save(out / f"{stem}_overlay.png")
        np.save(out / f"{stem}_panoptic.npy", result.panoptic)
        instances = [vars(i) for i in result.instances]
        (out / f"{stem}_instances.json").write_text(json.dumps(instances, indent=1))
        print(f"{path}: {len(instances)} instances, {result.model_time * 1000:.0f} ms -> {out}/{stem}_*")
    return 0


def cmd_convert_official(args: argparse.Namespace) -> int:
    from .model.official import convert_official

    path = convert_official(args.checkpoint, args.out, dataset=args.dataset)
    print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .ros.demo import run_demo

    return run_demo(frames=args.frames, out=Path(args.out), height=args.height, width=args.width)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    return run_bench(args)


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

    convert = sub.add_parser("convert-official", help="import the authors' mmcv checkpoint")
    convert.add_argument("checkpoint")
    convert.add_argument("out")
    convert.add_argument("--dataset", default="cityscapes", choices=["cityscapes", "kitti"])
    convert.set_defaults(func=cmd_convert_official)

    demo = sub.add_parser("demo", help="the node on a synthetic camera stream")
    demo.add_argument("--frames", type=int, default=20)
    demo.add_argument("--height", type=int, default=384)
    demo.add_argument("--width", type=int, default=768)
    demo.add_argument("--out", default="outputs/demo")
    demo.set_defaults(func=cmd_demo)

    # Listed for --help; main() hands its arguments to the training module's own parser.
    sub.add_parser("train", help="train on synthetic street scenes (efficientps train --help)")

    bench = sub.add_parser("bench", help="model latency and throughput")
    _add_model_args(bench)
    bench.add_argument("--sizes", default="512x1024,1024x2048")
    bench.add_argument("--iterations", type=int, default=5)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .train import main as train_main

        return train_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        # Bad input of every kind (config, checkpoint, device) arrives here
        # with a message that names it; a traceback would only bury it.
        print(f"efficientps {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
