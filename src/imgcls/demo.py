"""`make demo`: train LeNet-5 on the bundled digits, evaluate it, predict a few held-out images, show the report.

Runs offline in about a minute on two CPU cores:

    python -m imgcls.demo            # the same as `make demo`; writes runs/demo (replaced on every run)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from imgcls.errors import UserError
from imgcls.run_folder import RunFolder

HELD_OUT = 4  # validation images whose top-5 the demo prints


def _write_held_out(run: Path, count: int) -> list[tuple[Path, str]]:
    """Save a few validation images (kept by the final evaluation in samples.npz) as PNG files to predict."""
    from PIL import Image

    samples = RunFolder(run).read_samples()
    classes = [str(c) for c in samples["classes"]]
    folder = run / "held_out"
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(min(count, len(samples["images"]))):
        image = samples["images"][i]
        image = image[..., 0] if image.shape[-1] == 1 else image
        truth = classes[int(samples["targets"][i])]
        path = folder / f"{i:02d}_{truth}.png"
        Image.fromarray(image).save(path)
        out.append((path, truth))
    return out


def _top5(run: Path, paths: list[Path]) -> list[list[tuple[str, float]]]:
    """Top-5 labels and probabilities per file, through the shipped Predictor (what `imgcls predict` uses)."""
    from imgcls.inference import Predictor

    results = Predictor.from_run(run).predict(paths, topk=5)
    return [[(p.label, p.probability) for p in r.predictions] for r in results]


def run_demo(out: str | Path = "runs/demo", epochs: int | None = None) -> dict:
    """Train the ``digits`` recipe into ``out`` (replacing it), evaluate, predict, and return the numbers."""
    from imgcls.engine.config import resolve_config
    from imgcls.engine.evaluate import evaluate
    from imgcls.engine.train import train

    out = Path(out)
    overrides = {"train": {"out": str(out), "overwrite": True, "epochs": epochs}}
    result = train(resolve_config("digits", overrides))
    measured = evaluate(out)
    print(f"\nimgcls eval --run {out}: top-1 {measured['top1']:.2f}%, top-5 {measured['top5']:.2f}%")
    held_out = _write_held_out(out, HELD_OUT)
    predictions = _top5(out, [p for p, _ in held_out])
    print(f"\nTop-5 of {len(held_out)} held-out images (imgcls predict --run {out} {out / 'held_out'}):")
    for (path, truth), top in zip(held_out, predictions):
        ranked = "  ".join(f"{label} {100 * prob:5.1f}%" for label, prob in top)
        print(f"  {path.name:<12} true {truth}:  {ranked}")
    report = RunFolder(out).report_page
    print(f"\nReport: {report.resolve() if report.exists() else result.report}")
    return {"top1": measured["top1"], "top5": measured["top5"], "report": report, "predictions": predictions}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgcls.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="run folder (replaced)")
    parser.add_argument("--epochs", type=int, help="override the digits recipe's epochs")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.epochs)
    except UserError as exc:
        print(f"imgcls: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
