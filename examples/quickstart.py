"""RichKD in a few lines, through the Python API (docs/api.md): train a teacher, build a vision-language target
cache, distil a RichKD(L+F) student, analyse teacher and student, write the report.

    python examples/quickstart.py --data cifar10-jpeg.tar.gz --out runs/quickstart

--data: CIFAR-10 as an image folder (train/<class>/*.jpg, test/<class>/*.jpg; a folder or .tar.gz). Tiny on
purpose: a few hundred images (--train-images, --test-images), resnet8 teacher and student, a few epochs.
The vision-language teacher is the offline *surrogate* (`teacher="surrogate"`: a small image model and a
sentence encoder, a stand-in for CLIP, not CLIP; `pip install 'richkd[surrogate]'`). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import richkd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="CIFAR-10 image folder or .tar.gz (train/ and test/ inside)")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--train-images", type=int, default=500)
    p.add_argument("--test-images", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    data = ["data.name=imagefolder", f"data.root={args.data}", f"data.cache_dir={out / 'decoded'}",
            f"data.train_limit={args.train_images}", f"data.test_limit={args.test_images}"]
    fast = [f"train.epochs={args.epochs}", "train.batch_size=32", "train.progress=false", "optim.lr=0.05",
            "optim.schedule=cosine", "train.threads=1"]

    # 1. a teacher: labels only
    teacher = richkd.train(richkd.compose(method="vanilla", overrides=[
        *data, *fast, "model.student=resnet8", f"out_dir={out / 'teacher'}"]))

    # 2. the vision-language targets of the same training rows (the offline surrogate, not CLIP)
    cache = richkd.build_vlm_cache(out / "vlm_cache", dataset="imagefolder", root=args.data, split="train",
                                   limit=args.train_images, teacher="surrogate", include_flip=False, batch_size=64)

    # 3. a RichKD(L+F) student: fused CNN + vision-language logits and features
    student = richkd.train(richkd.compose(method="richkd-lf", overrides=[
        *data, *fast, "model.student=resnet8", "model.teacher=resnet8", "distill.nce_k=128",
        f"model.teacher_checkpoint={teacher.model_path}", f"vlm.cache={cache.path}", f"out_dir={out / 'student'}"]))

    # 4. predictions on the test rows, then calibration, quadrants and agreement
    test = {"dataset": "imagefolder", "root": args.data, "limit": args.test_images}
    preds = [richkd.predict(checkpoint=run.model_path, kind=kind, name=name, out=out / "preds" / f"{name}.preds"
                            ".safetensors", **test)
             for name, run, kind in (("teacher", teacher, "teacher"), ("richkd", student, None))]
    analysis = richkd.analyze([p.path for p in preds], out / "analysis", agreements=[("teacher", "richkd")])

    # 5. the report: runs' table, analyses' figures
    report = richkd.write_report([teacher.run_dir, student.run_dir], out / "report",
                                 analysis=analysis.json_path, title="RichKD quickstart (surrogate VLM teacher)")
    print(json.dumps({
        "teacher": teacher.summary, "student": student.summary,
        "student_epochs": len(student.metrics), "cache": str(cache.path), "cache_teacher": cache.teacher,
        "predictions": {p.provenance["name"]: {"path": str(p.path), "top1": p.top1, "rows": p.rows} for p in preds},
        "analysis": str(analysis.json_path), "report": str(report.markdown), "report_html": str(report.html),
    }, indent=2))


if __name__ == "__main__":
    main()
